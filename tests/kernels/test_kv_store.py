"""kv_append (every backend) and the prefix KV store: sharing, reference counts, freeing, versions, accounting."""

from __future__ import annotations

import pytest
import torch

import rpo_kernels
from rpo_kernels import KVStoreConfig, OutOfBlocksError, PrefixKVStore, StalePrefixError
from tests.helpers.attention_cases import sdpa_oracle

BOTH = ("reference", "triton")


@pytest.mark.parametrize("backend", BOTH)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kv_append_writes_rows_at_slots(backend, dtype):
    layers = torch.zeros(2, 50, 3, 80, dtype=dtype)
    k_cache, v_cache = layers[1], torch.zeros(50, 3, 80, dtype=dtype)  # a layer view, and a plain tensor
    k_new = torch.randn(19, 3, 2 * 80).to(dtype)[..., ::2]  # non-contiguous
    v_new = torch.randn(19, 3, 80).to(dtype)
    slots = torch.randperm(50)[:19].to(torch.int32)
    rpo_kernels.kv_append(k_cache, v_cache, k_new, v_new, slots, backend=backend)
    assert torch.equal(k_cache[slots.long()], k_new) and torch.equal(v_cache[slots.long()], v_new)
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[slots.long()] = False
    assert bool((k_cache[untouched] == 0).all()) and bool((layers[0] == 0).all())


@pytest.mark.parametrize("name,exc,change", [
    ("slots", ValueError, dict(slots=torch.tensor([1, 1, 2]))),
    ("slots", ValueError, dict(slots=torch.tensor([1, 2, 10]))),
    ("slots", TypeError, dict(slots=torch.tensor([1.0, 2.0, 3.0]))),
    ("slots", ValueError, dict(slots=torch.tensor([1, 2]))),
    ("k_new", TypeError, dict(k_new=torch.randn(3, 2, 8, dtype=torch.float64))),
    ("v_new", ValueError, dict(v_new=torch.randn(3, 2, 4))),
    ("v_cache", ValueError, dict(v_cache=torch.randn(9, 2, 8))),
])
def test_kv_append_bad_input_names_the_argument(name, exc, change):
    args = dict(k_cache=torch.zeros(10, 2, 8), v_cache=torch.zeros(10, 2, 8), k_new=torch.randn(3, 2, 8),
                v_new=torch.randn(3, 2, 8), slots=torch.tensor([4, 0, 9]))
    args.update(change)
    with pytest.raises(exc, match=f"'{name}'"):
        rpo_kernels.kv_append(**args, backend="reference")


def make_store(num_blocks=64, block_size=8, layers=2, dtype=torch.float32):
    return PrefixKVStore(KVStoreConfig(num_layers=layers, num_kv_heads=2, head_dim=64, num_blocks=num_blocks,
                                       block_size=block_size, dtype=dtype))


@pytest.mark.parametrize("backend", BOTH)
def test_store_feeds_shared_prefix_attention(backend):
    """Two groups (prefixes of 37 and 1 tokens, G = 3 and 2) decode a few steps; attention over the gathered KV
    equals SDPA over each sequence's own [prefix; suffix] as written."""
    store, version = make_store(), 4
    written = {}
    seqs = []
    for key, plen, g in (("q1", 37, 3), ("q2", 1, 2)):
        slots = store.add_prefix(key, plen, version)
        for layer in range(2):
            k, v = torch.randn(plen, 2, 64), torch.randn(plen, 2, 64)
            store.write(layer, slots, k, v, backend=backend)
            written[(key, layer)] = (k, v)
        seqs += store.fork(key, g, version)
    suffix = {s: ([], []) for s in seqs}
    for step in range(3):
        active = seqs if step < 2 else seqs[1:]  # a ragged last step
        slots = store.extend(active, 1)
        k, v = torch.randn(len(active), 2, 64), torch.randn(len(active), 2, 64)
        store.write(1, slots, k, v, backend=backend)
        for i, s in enumerate(active):
            suffix[s][0].append(k[i])
            suffix[s][1].append(v[i])
    packed = store.gather(seqs, 1, version)
    assert packed["group_indptr"].tolist() == [0, 3, 5] and packed["prefix_indptr"].tolist() == [0, 37, 38]
    assert packed["suffix_indptr"].tolist() == [0, 2, 5, 8, 11, 14]
    torch.testing.assert_close(packed["prefix_k"][:37], written[("q1", 1)][0], rtol=0, atol=0)
    q = torch.randn(len(seqs), 4, 64)
    out = rpo_kernels.shared_prefix_attention(q, **packed, backend=backend)
    case = dict(packed, q=q, q_indptr=None,
                suffix_k=torch.cat([torch.stack(suffix[s][0]) for s in seqs]),
                suffix_v=torch.cat([torch.stack(suffix[s][1]) for s in seqs]))
    assert (out - sdpa_oracle(case)).abs().max() < 2e-5


def test_refcounts_sharing_and_freeing():
    store = make_store(num_blocks=16, block_size=4)
    store.add_prefix("a", 10, 0)  # 3 blocks
    prefix_blocks = store.prefix_slots("a", 0).div(4, rounding_mode="floor").unique().tolist()
    assert len(prefix_blocks) == 3 and store.stats().blocks_used == 3
    ids = store.fork("a", 5, 0)
    assert all(store.block_refcount(b) == 6 for b in prefix_blocks)
    store.extend(ids, [1, 4, 5, 0, 9])  # suffix blocks: 1 + 1 + 2 + 0 + 3
    assert store.stats().blocks_used == 3 + 7 and store.suffix_length(ids[4]) == 9
    store.free_sequence(ids[4])
    assert store.stats().blocks_used == 3 + 4 and all(store.block_refcount(b) == 5 for b in prefix_blocks)
    store.drop_prefix("a")  # the prefix lives on while sequences hold it
    assert store.stats().blocks_used == 7 and store.stats().num_prefixes == 0
    for s in ids[:4]:
        store.free_sequence(s)
    assert store.stats().blocks_used == 0 and all(store.block_refcount(b) == 0 for b in prefix_blocks)
    with pytest.raises(KeyError):
        store.free_sequence(ids[0])


def test_memory_accounting_counts_the_prefix_once():
    store = make_store(num_blocks=32, block_size=8, layers=3, dtype=torch.bfloat16)
    per_block = 2 * 3 * 8 * 2 * 64 * 2  # K and V, layers, tokens, heads, head dim, bytes
    assert store.config.bytes_per_block == per_block
    store.add_prefix("p", 40, 1)  # 5 blocks
    ids = store.fork("p", 6, 1)
    store.extend(ids, 3)  # 6 suffix blocks
    st = store.stats()
    assert st.bytes_used == 11 * per_block
    assert st.bytes_if_duplicated == (6 * 5 + 6) * per_block
    assert st.bytes_saved == 5 * 5 * per_block
    assert st.bytes_free == (32 - 11) * per_block and st.num_sequences == 6


def test_weight_version_mismatch_raises_never_reuses():
    store = make_store()
    store.add_prefix("q", 12, weight_version=3)
    ids = store.fork("q", 2, 3)
    store.extend(ids, 1)
    for call in (lambda: store.prefix_slots("q", 4), lambda: store.fork("q", 2, 4),
                 lambda: store.gather(ids, 0, 4)):
        with pytest.raises(StalePrefixError, match="version"):
            call()
    with pytest.raises(ValueError, match="already stored"):
        store.add_prefix("q", 12, 3)
    store.add_prefix("q", 12, 4)  # recomputed under the new weights: replaces the entry
    assert store.prefix_slots("q", 4).numel() == 12
    with pytest.raises(StalePrefixError):
        store.gather(ids, 0, 4)  # the old sequences still continue the version-3 prefix
    store.add_prefix("r", 3, 4)
    store.add_prefix("s", 3, 2)
    assert store.evict_stale(4) == 1 and store.stats().num_prefixes == 2
    with pytest.raises(KeyError):
        store.prefix_slots("s", 2)


def test_out_of_blocks_and_bad_config():
    store = make_store(num_blocks=4, block_size=4)
    store.add_prefix("a", 8, 0)
    ids = store.fork("a", 2, 0)
    store.extend(ids, 4)
    with pytest.raises(OutOfBlocksError):
        store.extend(ids, 1)
    assert store.stats().blocks_used == 4  # a refused extend allocates nothing
    with pytest.raises(OutOfBlocksError):
        store.add_prefix("b", 1, 0)
    store.add_prefix("c", 0, 0)  # an empty prefix needs no block
    other = store.fork("c", 1, 0)
    with pytest.raises(ValueError, match="not adjacent"):
        store.gather([ids[0], other[0], ids[1]], 0, 0)
    for bad in (dict(num_blocks=0), dict(block_size=-1), dict(head_dim=2.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            KVStoreConfig(**dict(dict(num_layers=1, num_kv_heads=1, head_dim=8, num_blocks=4), **bad))
    with pytest.raises(TypeError, match="dtype"):
        KVStoreConfig(num_layers=1, num_kv_heads=1, head_dim=8, num_blocks=4, dtype=torch.int8)

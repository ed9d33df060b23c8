"""Prefix KV store: paged K/V blocks with reference counts, one copy of a group's prefix shared by its G sequences.

Memory is ``num_blocks`` blocks of ``block_size`` token slots per layer (``k[layer]``/``v[layer]`` are
[num_blocks * block_size, Hkv, D]; token i of a block table ``blocks`` lives at slot
``blocks[i // block_size] * block_size + i % block_size``). Every holder of a block counts one reference: a stored
prefix entry holds its blocks, each sequence forked from it holds them too, and a sequence alone holds its suffix
blocks. A block returns to the free list when its count reaches zero.

Prefix entries are keyed by the caller (a question id, a hash of the prompt + prefix tokens) and tagged with the
weight version that computed their KV. Asking for a prefix (``prefix_slots``, ``fork``, ``gather``) under another
version raises ``StalePrefixError``: KV is never reused across a weight update (RPO section 5).

Typical step: ``slots = add_prefix(key, P, version)``; per layer ``write(layer, slots, k, v)``;
``ids = fork(key, G, version)``; per decode step ``slots = extend(ids, 1)``, per layer ``write`` and
``gather(ids, layer, version)`` -> the packed arguments of ``shared_prefix_attention``; ``free_sequence`` when a
sequence ends. ``stats()`` reports bytes used and bytes saved against a private prefix copy per sequence.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from ._checks import FLOAT_DTYPES
from .ops.kv_append import kv_append


class StalePrefixError(RuntimeError):
    """A prefix's KV was asked for under a weight version other than the one that computed it."""


class OutOfBlocksError(RuntimeError):
    """The store has too few free blocks for an allocation."""


@dataclass(frozen=True)
class KVStoreConfig:
    """Shape of a store; validated on construction."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    num_blocks: int
    block_size: int = 16
    dtype: torch.dtype = torch.float32
    device: str | torch.device = "cpu"

    def __post_init__(self):
        for name in ("num_layers", "num_kv_heads", "head_dim", "num_blocks", "block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"KVStoreConfig.{name} must be a positive int, got {value!r}")
        if self.dtype not in FLOAT_DTYPES:
            raise TypeError(f"KVStoreConfig.dtype must be one of {[str(d) for d in FLOAT_DTYPES]}, got {self.dtype}")
        object.__setattr__(self, "device", torch.device(self.device))

    @property
    def bytes_per_block(self) -> int:
        """K and V bytes of one block over all layers."""
        elem = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * elem


@dataclass(frozen=True)
class KVStoreStats:
    blocks_total: int
    blocks_used: int
    bytes_used: int
    bytes_free: int
    bytes_if_duplicated: int  # the same contents with a private copy of its prefix per sequence
    bytes_saved: int  # bytes_if_duplicated - bytes_used
    num_prefixes: int
    num_sequences: int


@dataclass(eq=False)
class _Prefix:
    key: Hashable
    version: int
    blocks: list[int]
    length: int
    sequences: set[int] = field(default_factory=set)


@dataclass(eq=False)
class _Sequence:
    prefix: _Prefix
    blocks: list[int] = field(default_factory=list)
    length: int = 0


def _cat(slots: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    return torch.cat(slots) if slots else torch.empty(0, dtype=torch.long, device=device)


def _indptr(lengths: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor([0] + lengths, dtype=torch.long).cumsum(0).to(device)


class PrefixKVStore:
    """Paged, reference-counted KV memory for groups of sequences that share a prefix (see the module docstring)."""

    def __init__(self, config: KVStoreConfig):
        self.config = config
        c = config
        shape = (c.num_layers, c.num_blocks * c.block_size, c.num_kv_heads, c.head_dim)
        self.k = torch.zeros(shape, dtype=c.dtype, device=c.device)
        self.v = torch.zeros(shape, dtype=c.dtype, device=c.device)
        self._refs = [0] * c.num_blocks
        self._free = list(range(c.num_blocks - 1, -1, -1))
        self._prefixes: dict[Hashable, _Prefix] = {}
        self._sequences: dict[int, _Sequence] = {}
        self._next_id = 0

    # -- blocks -------------------------------------------------------------------------------------------------
    def _allocate(self, n: int, what: str) -> list[int]:
        if n > len(self._free):
            raise OutOfBlocksError(f"{what} needs {n} blocks, {len(self._free)} of {self.config.num_blocks} are free")
        blocks = [self._free.pop() for _ in range(n)]
        for b in blocks:
            self._refs[b] = 1
        return blocks

    def _release(self, blocks: Sequence[int]) -> None:
        for b in blocks:
            self._refs[b] -= 1
            if self._refs[b] == 0:
                self._free.append(b)

    def _slots(self, blocks: Sequence[int], start: int, stop: int) -> torch.Tensor:
        """Slots of tokens start:stop of a block table, int64 on the store's device."""
        bs = self.config.block_size
        pos = torch.arange(start, stop)
        table = torch.tensor(list(blocks), dtype=torch.long)
        slots = table[pos // bs] * bs + pos % bs if stop > start else pos
        return slots.to(self.config.device)

    def block_refcount(self, block: int) -> int:
        return self._refs[block]

    # -- prefixes -----------------------------------------------------------------------------------------------
    def add_prefix(self, key: Hashable, num_tokens: int, weight_version: int) -> torch.Tensor:
        """Allocate a prefix of ``num_tokens`` tokens computed under ``weight_version``; returns its slots [P].

        An entry of an older version under the same key is dropped first (its blocks live on while sequences hold
        them); an entry of the same version is an error (compute a group's prefix once).
        """
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 0:
            raise ValueError(f"argument 'num_tokens' must be an int >= 0, got {num_tokens!r}")
        old = self._prefixes.get(key)
        if old is not None:
            if old.version == weight_version:
                raise ValueError(f"prefix {key!r} is already stored under weight version {weight_version}")
            self.drop_prefix(key)
        n_blocks = -(-num_tokens // self.config.block_size)
        entry = _Prefix(key, weight_version, self._allocate(n_blocks, f"prefix {key!r}"), num_tokens)
        self._prefixes[key] = entry
        return self._slots(entry.blocks, 0, num_tokens)

    def _entry(self, key: Hashable, weight_version: int) -> _Prefix:
        entry = self._prefixes.get(key)
        if entry is None:
            raise KeyError(f"no prefix stored under key {key!r}")
        if entry.version != weight_version:
            raise StalePrefixError(f"prefix {key!r} was computed under weight version {entry.version}, asked for "
                                   f"under version {weight_version}: recompute it (add_prefix) with the current "
                                   f"weights")
        return entry

    def prefix_slots(self, key: Hashable, weight_version: int) -> torch.Tensor:
        """Slots [P] of a stored prefix; StalePrefixError under another weight version."""
        entry = self._entry(key, weight_version)
        return self._slots(entry.blocks, 0, entry.length)

    def drop_prefix(self, key: Hashable) -> None:
        """Forget the entry; its blocks are freed once no forked sequence holds them."""
        entry = self._prefixes.pop(key)
        self._release(entry.blocks)

    def evict_stale(self, weight_version: int) -> int:
        """Drop every entry not computed under ``weight_version``; returns how many were dropped."""
        stale = [k for k, e in self._prefixes.items() if e.version != weight_version]
        for key in stale:
            self.drop_prefix(key)
        return len(stale)

    # -- sequences ----------------------------------------------------------------------------------------------
    def fork(self, key: Hashable, num_sequences: int, weight_version: int) -> list[int]:
        """Start ``num_sequences`` sequences on the stored prefix (no copy: each holds a reference); returns ids."""
        entry = self._entry(key, weight_version)
        if num_sequences <= 0:
            raise ValueError(f"argument 'num_sequences' must be > 0, got {num_sequences}")
        ids = []
        for _ in range(num_sequences):
            sid, self._next_id = self._next_id, self._next_id + 1
            for b in entry.blocks:
                self._refs[b] += 1
            entry.sequences.add(sid)
            self._sequences[sid] = _Sequence(entry)
            ids.append(sid)
        return ids

    def suffix_length(self, seq_id: int) -> int:
        return self._sequences[seq_id].length

    def extend(self, seq_ids: Sequence[int], num_tokens: int | Sequence[int] = 1) -> torch.Tensor:
        """Reserve ``num_tokens`` more suffix tokens per sequence; returns their slots, sequence by sequence."""
        counts = [num_tokens] * len(seq_ids) if isinstance(num_tokens, int) else list(num_tokens)
        if len(counts) != len(seq_ids) or any(n < 0 for n in counts):
            raise ValueError(f"argument 'num_tokens' must be an int >= 0 or one per sequence, got {num_tokens!r}")
        seqs = [self._sequences[s] for s in seq_ids]
        bs = self.config.block_size
        need = sum(-(-(s.length + n) // bs) - len(s.blocks) for s, n in zip(seqs, counts))
        if need > len(self._free):
            raise OutOfBlocksError(f"extending {len(seqs)} sequences needs {need} blocks, {len(self._free)} are free")
        slots = []
        for s, n in zip(seqs, counts):
            s.blocks += self._allocate(-(-(s.length + n) // bs) - len(s.blocks), "a suffix")
            slots.append(self._slots(s.blocks, s.length, s.length + n))
            s.length += n
        return _cat(slots, self.config.device)

    def free_sequence(self, seq_id: int) -> None:
        """The sequence finished: free its suffix blocks and release its prefix reference."""
        seq = self._sequences.pop(seq_id)
        self._release(seq.blocks)
        self._release(seq.prefix.blocks)
        seq.prefix.sequences.discard(seq_id)

    # -- data ---------------------------------------------------------------------------------------------------
    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, backend=None) -> None:
        """Write K/V rows [T, Hkv, D] of ``layer`` at ``slots`` [T] (``rpo_kernels.kv_append``)."""
        kv_append(self.k[layer], self.v[layer], k, v, slots, backend=backend)

    def gather(self, seq_ids: Sequence[int], layer: int, weight_version: int) -> dict[str, torch.Tensor]:
        """Packed KV of ``seq_ids`` for ``shared_prefix_attention``: each prefix copied once per group.

        Sequences of one prefix must be adjacent in ``seq_ids``; they form one group. Returns prefix_k, prefix_v,
        prefix_indptr, suffix_k, suffix_v, suffix_indptr, group_indptr (int64 on the store's device).
        """
        groups: list[_Prefix] = []
        sizes: list[int] = []
        for sid in seq_ids:
            seq = self._sequences[sid]
            if seq.prefix.version != weight_version:
                raise StalePrefixError(f"sequence {sid} continues a prefix computed under weight version "
                                       f"{seq.prefix.version}, gathered under version {weight_version}")
            if groups and groups[-1] is seq.prefix:
                sizes[-1] += 1
            elif any(g is seq.prefix for g in groups):
                raise ValueError(f"argument 'seq_ids': the sequences of prefix {seq.prefix.key!r} are not adjacent")
            else:
                groups.append(seq.prefix)
                sizes.append(1)
        seqs = [self._sequences[s] for s in seq_ids]
        dev = self.config.device
        p_slots = _cat([self._slots(g.blocks, 0, g.length) for g in groups], dev)
        s_slots = _cat([self._slots(s.blocks, 0, s.length) for s in seqs], dev)
        k, v = self.k[layer], self.v[layer]
        return dict(prefix_k=k[p_slots], prefix_v=v[p_slots], prefix_indptr=_indptr([g.length for g in groups], dev),
                    suffix_k=k[s_slots], suffix_v=v[s_slots], suffix_indptr=_indptr([s.length for s in seqs], dev),
                    group_indptr=_indptr(sizes, dev))

    def stats(self) -> KVStoreStats:
        """Memory accounting: blocks and bytes used, and bytes saved by sharing prefixes."""
        per_block = self.config.bytes_per_block
        used = self.config.num_blocks - len(self._free)
        live = {id(e): e for e in self._prefixes.values()}
        live.update({id(s.prefix): s.prefix for s in self._sequences.values()})
        dup = sum(len(e.blocks) * max(1, len(e.sequences)) for e in live.values())
        dup += sum(len(s.blocks) for s in self._sequences.values())
        return KVStoreStats(self.config.num_blocks, used, used * per_block, len(self._free) * per_block,
                            dup * per_block, (dup - used) * per_block, len(self._prefixes), len(self._sequences))

"""Reference for ``kv_append``: write new K/V rows into a slot-addressed (paged) KV cache, in place.

    k_cache[slots[t]] = k_new[t],   v_cache[slots[t]] = v_new[t]      for t = 0..T-1 (slots distinct)

A paged cache of ``num_blocks`` blocks of ``block_size`` tokens is the same tensor viewed as
[num_blocks * block_size, Hkv, D]: token i of a sequence whose block table is ``blocks`` lives at slot
``blocks[i // block_size] * block_size + i % block_size``.
"""

from __future__ import annotations

import torch


def kv_append_ref(k_cache: torch.Tensor, v_cache: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                  slots: torch.Tensor) -> None:
    """In place: k_cache/v_cache [num_slots, Hkv, D] get rows k_new/v_new [T, Hkv, D] at slots [T] (int64)."""
    k_cache.index_copy_(0, slots, k_new)
    v_cache.index_copy_(0, slots, v_new)

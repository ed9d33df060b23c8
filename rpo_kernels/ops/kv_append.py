"""Public ``kv_append``: validation and backend dispatch (math in ``rpo_kernels.reference.kv_append``)."""

from __future__ import annotations

import torch

from .._checks import FLOAT_DTYPES, check_index_range, check_tensor
from .._dispatch import resolve_backend
from ..reference.kv_append import kv_append_ref

IMPLEMENTED = ("triton", "reference")


def kv_append(k_cache, v_cache, k_new, v_new, slots, *, backend=None) -> None:
    """Write new K/V rows into a slot-addressed (paged) KV cache, in place: ``k_cache[slots[t]] = k_new[t]``.

    Args:
        k_cache, v_cache: [num_slots, Hkv, D] fp32/fp16/bf16, one shape, dtype and device (a paged cache of
            num_blocks blocks of block_size tokens viewed as num_slots = num_blocks * block_size rows).
        k_new, v_new: [T, Hkv, D], the cache's dtype and device.
        slots: [T] int32/int64, distinct, in [0, num_slots).
        backend: None (auto), "cuda", "triton" or "reference".

    Not differentiable (a cache write at inference time); returns None.
    """
    check_tensor("k_cache", k_cache, ndim=3, dtypes=FLOAT_DTYPES)
    device, dtype = k_cache.device, k_cache.dtype
    for name, value in (("v_cache", v_cache), ("k_new", k_new), ("v_new", v_new)):
        check_tensor(name, value, ndim=3, device=device)
        if value.dtype != dtype:
            raise TypeError(f"argument '{name}' must have the dtype of 'k_cache' ({dtype}), got {value.dtype}")
        if value.shape[1:] != k_cache.shape[1:]:
            raise ValueError(f"argument '{name}' must have shape [*, {k_cache.shape[1]}, {k_cache.shape[2]}] like "
                             f"'k_cache', got {tuple(value.shape)}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"argument 'v_cache' must have the shape of 'k_cache' {tuple(k_cache.shape)}, "
                         f"got {tuple(v_cache.shape)}")
    if v_new.shape != k_new.shape:
        raise ValueError(f"argument 'v_new' must have the shape of 'k_new' {tuple(k_new.shape)}, "
                         f"got {tuple(v_new.shape)}")
    check_tensor("slots", slots, ndim=1, dtypes=(torch.int32, torch.int64), device=device)
    if slots.numel() != k_new.shape[0]:
        raise ValueError(f"argument 'slots' must have one entry per row of 'k_new' ({k_new.shape[0]}), "
                         f"got {slots.numel()}")
    slots = slots.long()
    check_index_range("slots", slots, k_cache.shape[0])
    if torch.unique(slots).numel() != slots.numel():
        raise ValueError("argument 'slots' must hold distinct slots (two rows would write the same slot)")
    chosen = resolve_backend("kv_append", device, backend, ("cuda",) + IMPLEMENTED)
    with torch.no_grad():
        if chosen == "cuda":
            from .. import cuda

            cuda.kv_append(k_cache, v_cache, k_new, v_new, slots)
        elif chosen == "triton":
            from ..triton.kv_append import kv_append as kv_append_triton

            kv_append_triton(k_cache, v_cache, k_new, v_new, slots.contiguous())
        else:
            kv_append_ref(k_cache, v_cache, k_new, v_new, slots)

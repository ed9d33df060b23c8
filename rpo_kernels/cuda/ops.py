"""Python layer of the CUDA ops: lazy loading, wrappers with the public signatures, fake (meta) partners.

Ops (schemas in ``csrc/ops/bindings.cpp``)::

    rpo_kernels::lane_decode(Tensor q, Tensor prefix_k, Tensor prefix_v, Tensor suffix_k, Tensor suffix_v,
        Tensor tables, int num_groups, int prefix_tokens, float softmax_scale) -> (Tensor, Tensor)

The wrappers make inputs acceptable to the launchers (contiguous rows where needed, fp32 LSEs); index values are
validated by the public functions from host integers (``plan_lane_decode``), the launchers check shapes, dtypes,
devices and strides and name the argument in their errors.
"""

from __future__ import annotations

import importlib

import torch

from ..reference.lane_decode_attention import lane_groups

DECODE_DTYPES = (torch.float16, torch.bfloat16)
DECODE_HEAD_DIMS = (64, 128)

_loaded = False
_fakes_registered = False


def load() -> None:
    """Import ``rpo_kernels._C`` and register the fake partners; ImportError when the extension is not built."""
    global _loaded
    if _loaded:
        return
    importlib.import_module("rpo_kernels._C")
    register_fakes()
    _loaded = True


def available() -> tuple[bool, str]:
    """Whether the extension loads here and, either way, why."""
    try:
        load()
    except ImportError as exc:
        return False, f"the CUDA extension rpo_kernels._C is not built ({exc})"
    return True, "rpo_kernels._C loaded"


def register_fakes() -> None:
    """Register the fake partners of the ``rpo_kernels::`` ops (once; the ops must already be defined).
    lane_decode is inference-only (no backward)."""
    global _fakes_registered
    if _fakes_registered:
        return
    torch.library.register_fake("rpo_kernels::lane_decode")(_lane_decode_fake)
    _fakes_registered = True


def _lane_decode_fake(q, prefix_k, prefix_v, suffix_k, suffix_v, tables, num_groups, prefix_tokens, softmax_scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:2], dtype=torch.float32)


def _vector_rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dim is contiguous and every row starts on 16 bytes, else a contiguous copy."""
    per16 = 16 // t.element_size()
    ok = t.stride(-1) == 1 and t.storage_offset() % per16 == 0
    ok = ok and all(s % per16 == 0 for s in t.stride()[:-1])
    return t if ok else t.contiguous()


def supports_lane_decode(q: torch.Tensor, *tensors: torch.Tensor) -> tuple[bool, str]:
    """Whether the CUDA kernel covers this decode call (fp16/bf16, head dim 64 or 128, no gradient asked of
    ``q`` or ``tensors``) and, if not, why."""
    if q.dtype not in DECODE_DTYPES:
        return False, f"the CUDA kernel takes float16 or bfloat16, got {q.dtype}"
    if q.shape[-1] not in DECODE_HEAD_DIMS:
        return False, f"the CUDA kernel takes head dim 64 or 128, got {q.shape[-1]}"
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, *tensors)):
        return False, "the CUDA decode kernel has no backward; inputs require grad"
    return True, "supported dtype and head dim, no gradient"


def lane_tables(plan, device: torch.device) -> tuple[torch.Tensor, int, int]:
    """(int32 tables [3B+1+3N] on ``device``, B, prefix tokens read) of ``plan``, built once per plan and device from
    its host integers (one non-blocking transfer from pinned memory): group_indptr over the grouped order,
    group_lane, group_len, order, suffix_lane, suffix_len (the layout of ``rpo::LaneDecodeParams``)."""
    key = ("cuda", str(device))
    cached = plan.backend_cache.get(key)
    if cached is None:
        order, groups = lane_groups(plan)
        _, _, s_lane, s_len = plan.host
        indptr = [first for _, _, first, _ in groups] + [plan.num_queries]
        flat = (indptr + [lane for lane, _, _, _ in groups] + [length for _, length, _, _ in groups] + order
                + list(s_lane) + list(s_len))
        pinned = device.type == "cuda"  # built in the first layer's call: a non-blocking copy, no host sync
        tables = torch.tensor(flat, dtype=torch.int32, pin_memory=pinned).to(device, non_blocking=pinned)
        cached = (tables, len(groups), sum(length for _, length, _, _ in groups))
        plan.backend_cache[key] = cached
    return cached


def lane_decode_attention(q, prefix_k, prefix_v, suffix_k, suffix_v, plan, scale: float):
    """CUDA ``rpo_kernels.lane_decode_attention``: (out [N, Hq, D] in q's dtype, lse [N, Hq] fp32), forward only.

    Lanes [lanes, Hkv, capacity, D] are read in place (K and V of a side with equal strides, 16-byte aligned rows);
    ``plan`` is a ``rpo_kernels.LanePlan`` (validated); see ``supports_lane_decode`` for what the kernel covers.
    """
    load()
    tables, groups, prefix_tokens = lane_tables(plan, q.device)
    return torch.ops.rpo_kernels.lane_decode(_vector_rows(q), prefix_k, prefix_v, suffix_k, suffix_v, tables,
                                             groups, prefix_tokens, float(scale))

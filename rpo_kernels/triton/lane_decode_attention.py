"""Triton path of ``lane_decode_attention``: the shared-prefix segment kernel reading KV lanes in place.

Semantics: ``rpo_kernels.reference.lane_decode_attention``. A lane buffer [lanes, Hkv, capacity, D] is handed to the
segment kernel (``rpo_kernels.triton.shared_prefix_attention``) as KV "rows" through a strided view: row
``lane * Hkv * capacity + position`` with head stride ``capacity * D``, so a segment (q_start, q_len, kv_start, kv_len,
off) with ``kv_start = lane * Hkv * capacity`` reads that lane where it is stored. Segments: one per prefix lane with
the queries of its group (sorted by lane, so they are adjacent), one per query for its suffix lane. The tables are
built on the host once per plan and cached on it, so every layer of a step launches with the same device tables.
"""

from __future__ import annotations

import torch

from ..reference.lane_decode_attention import lane_groups
from .shared_prefix_attention import plan_segments, shared_prefix_forward


def lane_rows(buf: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(rows view [R, Hkv, D] of a lane buffer [lanes, Hkv, cap, D] with unit-stride D, rows per lane)."""
    lanes, hkv, cap, d = buf.shape
    s_lane, s_head, s_pos, s_d = buf.stride()
    if s_d != 1 or s_lane % s_pos or s_head % s_pos:
        raise ValueError(f"lane buffer strides {buf.stride()} cannot be read as KV rows (D must be contiguous and "
                         f"lanes and heads whole rows apart)")
    per_lane = s_lane // s_pos
    rows = (lanes - 1) * per_lane + cap  # the last lane's last head ends at row rows - 1 + its head offset
    return buf.as_strided((rows, hkv, d), (s_pos, s_head, 1)), per_lane


def _tables(plan, rep: int, per_lane_p: int, per_lane_s: int, device, dtype):
    key = (rep, per_lane_p, per_lane_s, str(device), dtype)
    cached = plan.backend_cache.get(key)
    if cached is not None:
        return cached
    order, groups = lane_groups(plan)  # host integers: no device synchronisation
    _, _, s_lane, s_len = plan.host
    pseg = [(first, count, lane * per_lane_p, length, length) for lane, length, first, count in groups]
    sseg = [(j, 1, s_lane[i] * per_lane_s, s_len[i], s_len[i] - 1) for j, i in enumerate(order)]
    pinned = device.type == "cuda"  # built in the first layer's call: non-blocking copies, no host sync
    tables = (plan_segments(pseg, sseg, rep, device, dtype, decode=True),
              torch.tensor(order, dtype=torch.long, pin_memory=pinned).to(device, non_blocking=pinned))
    plan.backend_cache[key] = tables
    return tables


def lane_decode_triton(q, prefix_k, prefix_v, suffix_k, suffix_v, plan, scale: float):
    """(out [N, Hq, D] in q's dtype, lse [N, Hq] fp32), forward only (decode runs without gradients)."""
    (pk, per_p), (pv, _) = lane_rows(prefix_k), lane_rows(prefix_v)
    (sk, per_s), (sv, _) = lane_rows(suffix_k), lane_rows(suffix_v)
    tables, order = _tables(plan, q.shape[1] // prefix_k.shape[1], per_p, per_s, q.device, q.dtype)
    out, lse = shared_prefix_forward(q.index_select(0, order), pk, pv, sk, sv, tables, scale)
    return torch.empty_like(out).index_copy_(0, order, out), torch.empty_like(lse).index_copy_(0, order, lse)

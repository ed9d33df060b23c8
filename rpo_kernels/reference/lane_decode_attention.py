"""Reference for ``lane_decode_attention``: one decode step of shared-prefix attention over KV kept in lanes.

Lanes are per-layer buffers with one row per stored sequence, read in place (views, no gather of KV):
- prefix lanes ``prefix_k``/``prefix_v`` [Lp, Hkv, Pcap, D]: lane a holds one group's prefix keys 0..P_a-1;
- suffix lanes ``suffix_k``/``suffix_v`` [Ls, Hkv, Scap, D]: lane c holds one sequence's own tokens 0..S_c-1, the
  current one included.
Query n (one per running sequence) attends to the prefix of its group's lane and to its own suffix lane. The plan
(``rpo_kernels.LanePlan``) places the queries: the prefix part runs ONE batched matmul over the
prefix lanes ``prefix_lo:prefix_lo + prefix_lanes`` with each lane's queries (the group's G sequences x the Hq/Hkv
heads of a KV head) as rows, so a group's prefix is read once per step, not once per sequence; the suffix part one
batched matmul over the suffix lanes ``suffix_lo:suffix_lo + suffix_lanes``, keys beyond a lane's length masked.
With ``s_j = scale * q . k_j`` over [prefix ; suffix] of the sequence::

    out = sum_j softmax(s)_j v_j,    lse = log sum_j exp(s_j)

computed as two partial attentions (out, lse) merged exactly by their log-sum-exp. Plain torch ops on any device: the
CPU path and the oracle of the other backends. On a CPU each part is torch's fused attention kernel (the one behind
SDPA, which also returns the log-sum-exp; fp32 accumulation); elsewhere, or with ``fused=False``, matmuls and a
softmax in fp32 (16-bit lanes upcast as read).
"""

from __future__ import annotations

import torch

# torch's fused CPU attention (the kernel behind SDPA on a CPU), which also returns the log-sum-exp; absent in some
# builds, where the matmul form below runs instead.
_FUSED_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def lane_groups(plan) -> tuple[list[int], list[tuple[int, int, int, int]]]:
    """The queries of ``plan`` grouped by prefix lane, from its host integers (no device sync), once per plan.

    Returns (order, groups): order [N], the query indices sorted by prefix lane (stable); groups, one per prefix
    lane read, (lane, prefix length, first position in ``order``, query count), in lane order. The CUDA and Triton
    backends build their tables from it.
    """
    cached = plan.backend_cache.get("groups")
    if cached is None:
        p_lane, p_len, _, _ = plan.host
        order = sorted(range(plan.num_queries), key=lambda i: p_lane[i])
        groups: list[tuple[int, int, int, int]] = []
        for j, i in enumerate(order):
            if groups and groups[-1][0] == p_lane[i]:
                lane, length, first, count = groups[-1]
                groups[-1] = (lane, length, first, count + 1)
            else:
                groups.append((p_lane[i], p_len[i], j, 1))
        cached = plan.backend_cache["groups"] = (order, groups)
    return cached


def _part(rows, k, v, bias, has_keys, scale: float, fused: bool):
    """rows [lanes, Hkv, M, D] against k/v [lanes, Hkv, L, D] (views) with bias [lanes, 1, 1, L] (0 / -inf).

    Returns (out [lanes, Hkv, M, D] fp32, lse [lanes, Hkv, M] fp32, -inf for a lane without keys: has_keys [lanes],
    None when every lane has keys).
    """
    if fused:
        out, lse = _FUSED_CPU(rows, k, v, attn_mask=bias.to(rows.dtype), scale=scale)
    else:
        s = torch.matmul(rows.float(), k.float().transpose(-1, -2)) * scale + bias
        lse = torch.logsumexp(s, dim=-1)
        out = torch.matmul(torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None]), v.float())
    if has_keys is None:  # every lane in the range has keys
        return out.float(), lse.float()
    has = has_keys[:, None, None]
    return torch.where(has[..., None], out.float(), 0.0), torch.where(has, lse.float(), float("-inf"))


def lane_decode_attention_ref(q, prefix_k, prefix_v, suffix_k, suffix_v, plan, scale: float,
                              fused: bool | None = None):
    """One decode step; ``plan`` validated by ``rpo_kernels.ops.lane_decode_attention.plan_lane_decode``.

    q [N, Hq, D]; prefix_k/v [Lp, Hkv, Pcap, D]; suffix_k/v [Ls, Hkv, Scap, D], one float dtype and device.
    ``fused``: use torch's fused CPU attention for each part (default: on a CPU when torch has it), else matmuls in
    fp32. Returns (out [N, Hq, D] in q's dtype, lse [N, Hq] fp32).
    """
    if fused is None:
        fused = q.device.type == "cpu" and _FUSED_CPU is not None
    n, hq, d = q.shape
    hkv = prefix_k.shape[1]
    rep = hq // hkv
    parts = []
    if plan.prefix_len:
        a, g = plan.prefix_lanes, plan.group_width
        idx = plan.prefix_rows  # None: query n is row n (groups in lane order, all full)
        rows = q if idx is None else q.new_zeros(a * g, hq, d).index_copy_(0, idx, q)
        rows = rows.view(a, g, hkv, rep, d).transpose(1, 2).reshape(a, hkv, g * rep, d)
        lanes = slice(plan.prefix_lo, plan.prefix_lo + a)
        out, lse = _part(rows, prefix_k[lanes, :, :plan.prefix_len], prefix_v[lanes, :, :plan.prefix_len],
                         plan.prefix_bias, plan.prefix_has_keys, scale, fused)
        out = out.view(a, hkv, g, rep, d).transpose(1, 2).reshape(a * g, hq, d)
        lse = lse.view(a, hkv, g, rep).transpose(1, 2).reshape(a * g, hq)
        parts.append((out, lse) if idx is None else (out.index_select(0, idx), lse.index_select(0, idx)))
    if plan.suffix_len:
        c = plan.suffix_lanes
        idx = plan.suffix_rows  # None: query n reads lane suffix_lo + n
        rows = (q if idx is None else q.new_zeros(c, hq, d).index_copy_(0, idx, q)).view(c, hkv, rep, d)
        lanes = slice(plan.suffix_lo, plan.suffix_lo + c)
        out, lse = _part(rows, suffix_k[lanes, :, :plan.suffix_len], suffix_v[lanes, :, :plan.suffix_len],
                         plan.suffix_bias, plan.suffix_has_keys, scale, fused)
        out, lse = out.reshape(c, hq, d), lse.reshape(c, hq)
        parts.append((out, lse) if idx is None else (out.index_select(0, idx), lse.index_select(0, idx)))
    if len(parts) == 1:
        out, lse = parts[0]
        return out.to(q.dtype), lse
    (o1, l1), (o2, l2) = parts  # exact merge: lse = log(e^l1 + e^l2), out = o2 + e^(l1 - lse) (o1 - o2)
    lse = torch.logaddexp(l1, l2)
    out = torch.addcmul(o2, torch.exp(l1 - lse)[..., None], o1 - o2)
    return out.to(q.dtype), lse

"""Reference for ``lane_decode_attention``: one decode step of shared-prefix attention over KV kept in lanes.

Lanes are per-layer buffers with one row per stored sequence, read in place (views, no gather of KV):
- prefix lanes ``prefix_k``/``prefix_v`` [Lp, Hkv, Pcap, D]: lane a holds one group's prefix keys 0..P_a-1;
- suffix lanes ``suffix_k``/``suffix_v`` [Ls, Hkv, Scap, D]: lane c holds one sequence's own tokens 0..S_c-1, the
  current one included.
Query n (one per running sequence) attends to the prefix of its group's lane and to its own suffix lane. The plan
(``rpo_kernels.ops.lane_attention.LanePlan``) places the queries: the prefix part runs ONE batched matmul over the
prefix lanes ``prefix_lo:prefix_lo + prefix_lanes`` with each lane's queries (the group's G sequences x the Hq/Hkv
heads of a KV head) as rows, so a group's prefix is read once per step, not once per sequence; the suffix part one
batched matmul over the suffix lanes ``suffix_lo:suffix_lo + suffix_lanes``, keys beyond a lane's length masked.
With ``s_j = scale * q . k_j`` over [prefix ; suffix] of the sequence::

    out = sum_j softmax(s)_j v_j,    lse = log sum_j exp(s_j)

computed as the two partial softmaxes merged by their maxima (exact), in fp32 (16-bit lanes are upcast as read).
Plain torch ops on any device: the CPU path and the oracle of the other backends.
"""

from __future__ import annotations

import torch


def _part(q_rows, k, v, bias, scale: float):
    """q_rows [lanes, Hkv, M, D] against k/v [lanes, Hkv, L, D] (views) with bias [lanes, 1, 1, L] (0 / -inf).

    Returns (unnormalised out [lanes, Hkv, M, D] fp32, row max [lanes, Hkv, M, 1] fp32 (-inf: no key),
    row sum [lanes, Hkv, M, 1] fp32).
    """
    s = torch.matmul(q_rows.float(), k.float().transpose(-1, -2)) * scale + bias
    m = s.amax(-1, keepdim=True)
    e = torch.exp(s - torch.where(torch.isinf(m), 0.0, m))
    return torch.matmul(e, v.float()), m, e.sum(-1, keepdim=True)


def lane_decode_attention_ref(q, prefix_k, prefix_v, suffix_k, suffix_v, plan, scale: float):
    """One decode step; ``plan`` validated by ``rpo_kernels.ops.lane_attention.plan_lane_decode``.

    q [N, Hq, D]; prefix_k/v [Lp, Hkv, Pcap, D]; suffix_k/v [Ls, Hkv, Scap, D], one float dtype and device.
    Returns (out [N, Hq, D] in q's dtype, lse [N, Hq] fp32).
    """
    n, hq, d = q.shape
    hkv = prefix_k.shape[1]
    rep = hq // hkv
    parts = []
    if plan.prefix_len:
        a, g = plan.prefix_lanes, plan.group_width
        rows = q.new_zeros(a * g, hq, d).index_copy_(0, plan.prefix_rows, q)
        rows = rows.view(a, g, hkv, rep, d).transpose(1, 2).reshape(a, hkv, g * rep, d)
        lanes = slice(plan.prefix_lo, plan.prefix_lo + a)
        out, m, s = _part(rows, prefix_k[lanes, :, :plan.prefix_len], prefix_v[lanes, :, :plan.prefix_len],
                          plan.prefix_bias, scale)

        def per_query(x):  # [a, Hkv, g * rep, w] -> [N, Hq, w]
            w = x.shape[-1]
            return x.view(a, hkv, g, rep, w).transpose(1, 2).reshape(a * g, hq, w).index_select(0, plan.prefix_rows)

        parts.append((per_query(out), per_query(m), per_query(s)))
    if plan.suffix_len:
        c = plan.suffix_lanes
        rows = q.new_zeros(c, hq, d).index_copy_(0, plan.suffix_rows, q).view(c, hkv, rep, d)
        lanes = slice(plan.suffix_lo, plan.suffix_lo + c)
        out, m, s = _part(rows, suffix_k[lanes, :, :plan.suffix_len], suffix_v[lanes, :, :plan.suffix_len],
                          plan.suffix_bias, scale)
        parts.append(tuple(x.reshape(c, hq, x.shape[-1]).index_select(0, plan.suffix_rows) for x in (out, m, s)))
    if len(parts) == 1:
        (out, m, s), = parts
        return (out / s).to(q.dtype), (m + torch.log(s))[..., 0]
    (o1, m1, s1), (o2, m2, s2) = parts
    m = torch.maximum(m1, m2)  # every query sees at least one key (checked by the plan): m is finite
    w1, w2 = torch.exp(m1 - m), torch.exp(m2 - m)
    total = s1 * w1 + s2 * w2
    return ((o1 * w1 + o2 * w2) / total).to(q.dtype), (m + torch.log(total))[..., 0]

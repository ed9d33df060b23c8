"""Lane decode attention written the plain way (per query over its concatenated [prefix lane ; suffix lane] keys):
the float64 oracle and the 'plain torch at low precision' yardstick of tests/helpers/rules.py for the CUDA kernel
tests (emulated on a CPU and on a GPU), with a builder of irregular lane cases."""

from __future__ import annotations

import math

import torch


def lane_case(glens, plens, slens, hq, hkv, d, dtype, *, seed=0, device="cpu", spare_lanes=3, spare_cap=5):
    """Random lanes and the ``plan_lane_decode`` arguments of one decode step.

    Group g has ``glens[g]`` queries sharing a prefix of ``plens[g]`` keys; query lengths ``slens`` (None: ragged
    1..129). Queries come in a shuffled order (not group by group), lanes are shuffled with spare ones, capacities
    exceed the longest entry and every unused slot holds garbage. K and V of a side are strided views of one buffer;
    q is non-contiguous (heads outermost). Returns dict(q, pk, pv, sk, sv, args, prefix_shape, suffix_shape).
    """
    gen = torch.Generator().manual_seed(seed)
    b, n = len(glens), sum(glens)
    slens = list(slens) if slens is not None else torch.randint(1, 130, (n,), generator=gen).tolist()
    p_cap, s_cap = max(plens) + spare_cap, max(slens) + spare_cap
    p_lanes = torch.randperm(b + spare_lanes, generator=gen)[:b].tolist()
    s_lanes = torch.randperm(n + spare_lanes, generator=gen)[:n].tolist()
    dev = torch.device(device)
    prefix = torch.randn(b + spare_lanes, hkv, p_cap, 2, d, generator=gen).to(dtype).to(dev)
    suffix = torch.randn(n + spare_lanes, hkv, s_cap, 2, d, generator=gen).to(dtype).to(dev)
    group_of = [g for g, count in enumerate(glens) for _ in range(count)]
    order = torch.randperm(n, generator=gen).tolist()
    args = dict(prefix_lane=[p_lanes[group_of[i]] for i in order], prefix_length=[plens[group_of[i]] for i in order],
                suffix_lane=[s_lanes[i] for i in order], suffix_length=[slens[i] for i in order])
    q = torch.randn(hq, n, d, generator=gen).to(dtype).transpose(0, 1)
    return dict(q=q.to(dev), pk=prefix[..., 0, :], pv=prefix[..., 1, :], sk=suffix[..., 0, :], sv=suffix[..., 1, :],
                args=args, prefix_shape=(b + spare_lanes, p_cap),
                suffix_shape=(n + spare_lanes, s_cap))


def lane_attention(case: dict, scale: float, dtype):
    """Query n attends to [keys :prefix_length[n] of prefix lane prefix_lane[n] ; keys :suffix_length[n] of suffix
    lane suffix_lane[n]].

    dtype float64: the oracle. A 16-bit dtype: matmuls in that dtype, softmax in fp32 (plain torch at the kernel's
    precision). Returns (out [N, Hq, D] in dtype, lse [N, Hq] float64; -inf and 0 output for an empty key set).
    """
    q, a = case["q"], case["args"]
    n, hq, d = q.shape
    rep = hq // case["pk"].shape[1]
    soft = torch.float64 if dtype == torch.float64 else torch.float32
    out = torch.zeros(n, hq, d, dtype=dtype, device=q.device)
    lse = torch.full((n, hq), -math.inf, dtype=torch.float64, device=q.device)
    for i in range(n):
        pl, pn, sl, sn = (a[k][i] for k in ("prefix_lane", "prefix_length", "suffix_lane", "suffix_length"))
        k = torch.cat([case["pk"][pl, :, :pn], case["sk"][sl, :, :sn]], 1).to(dtype).repeat_interleave(rep, 0)
        v = torch.cat([case["pv"][pl, :, :pn], case["sv"][sl, :, :sn]], 1).to(dtype).repeat_interleave(rep, 0)
        if k.shape[1] == 0:
            continue
        s = torch.einsum("hd,hld->hl", q[i].to(dtype), k).to(soft) * scale
        out[i] = torch.einsum("hl,hld->hd", torch.softmax(s, -1).to(dtype), v)
        lse[i] = torch.logsumexp(s.double(), -1)
    return out, lse

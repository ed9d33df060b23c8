"""Decode-form shared-prefix attention, written the plain way (per sequence over its concatenated KV): the float64
oracle and the 'plain torch at low precision' yardstick of tests/helpers/rules.py for the CUDA kernel tests."""

from __future__ import annotations

import math

import torch


def indptr(lengths) -> list[int]:
    out = [0]
    for x in lengths:
        out.append(out[-1] + int(x))
    return out


def decode_attention(q, pk, pv, pind, sk, sv, sind, gind, scale, dtype):
    """Sequence i of group b attends to [prefix rows pind[b]:pind[b+1] ; suffix rows sind[i]:sind[i+1]].

    dtype float64: the oracle. A 16-bit dtype: matmuls in that dtype, softmax in fp32 (plain torch at the kernel's
    precision). Returns (out [N, Hq, D] in dtype, lse [N, Hq] float64; -inf and 0 output for an empty key set).
    """
    n, hq, d = q.shape
    rep = hq // pk.shape[1]
    soft = torch.float64 if dtype == torch.float64 else torch.float32
    out = torch.zeros(n, hq, d, dtype=dtype, device=q.device)
    lse = torch.full((n, hq), -math.inf, dtype=torch.float64, device=q.device)
    for b in range(len(gind) - 1):
        for i in range(gind[b], gind[b + 1]):
            k = torch.cat([pk[pind[b]:pind[b + 1]], sk[sind[i]:sind[i + 1]]]).to(dtype).repeat_interleave(rep, 1)
            v = torch.cat([pv[pind[b]:pind[b + 1]], sv[sind[i]:sind[i + 1]]]).to(dtype).repeat_interleave(rep, 1)
            if k.shape[0] == 0:
                continue
            s = torch.einsum("hd,lhd->hl", q[i].to(dtype), k).to(soft) * scale
            out[i] = torch.einsum("hl,lhd->hd", torch.softmax(s, -1).to(dtype), v)
            lse[i] = torch.logsumexp(s.double(), -1)
    return out, lse

"""Ragged shared-prefix attention cases and their oracle: torch SDPA over each sequence's [prefix; suffix] KV."""

from __future__ import annotations

import torch
import torch.nn.functional as F

KV_NAMES = ("prefix_k", "prefix_v", "suffix_k", "suffix_v")
DIFF_NAMES = ("q",) + KV_NAMES


def indptr(lengths) -> torch.Tensor:
    return torch.tensor([0] + list(lengths), dtype=torch.long).cumsum(0)


def ragged(n: int, lo: int, hi: int, gen: torch.Generator) -> list[int]:
    """n lengths drawn uniformly from lo..hi."""
    return torch.randint(lo, hi + 1, (n,), generator=gen).tolist()


def make_case(glens, plens, hq, hkv, d, *, slens=None, extend=False, max_q=None, dtype=torch.float32, seed=0,
              noncontig=False) -> dict:
    """Keyword arguments of ``shared_prefix_attention``: B = len(glens) groups of glens[b] sequences, prefix
    lengths plens, suffix lengths ragged in 1..129 unless given, and for ``extend`` 1..min(S, max_q) queries each.
    ``noncontig`` gives q and suffix_k non-contiguous strides."""
    gen = torch.Generator().manual_seed(seed)
    n = sum(glens)
    slens = ragged(n, 1, 129, gen) if slens is None else list(slens)
    qlens = None
    if extend:
        qlens = [int(torch.randint(1, min(s, max_q or s) + 1, (1,), generator=gen)) if s else 0 for s in slens]
    total_q = n if qlens is None else sum(qlens)

    def rand(rows, heads):
        return torch.randn(rows, heads, d, generator=gen).to(dtype)

    case = dict(prefix_k=rand(sum(plens), hkv), prefix_v=rand(sum(plens), hkv), suffix_k=rand(sum(slens), hkv),
                suffix_v=rand(sum(slens), hkv), prefix_indptr=indptr(plens), suffix_indptr=indptr(slens),
                group_indptr=indptr(glens), q_indptr=None if qlens is None else indptr(qlens))
    case["q"] = rand(total_q, hq)
    if noncontig:
        case["q"] = case["q"].transpose(0, 1).contiguous().transpose(0, 1)  # [total_q, Hq, D] with head-major rows
        wide = torch.zeros(sum(slens), hkv, 2 * d, dtype=dtype)
        wide[..., ::2] = case["suffix_k"]
        case["suffix_k"] = wide[..., ::2]
    return case


def sdpa_oracle(case: dict, dtype=torch.float64, tensors: dict | None = None) -> torch.Tensor:
    """[total_q, Hq, D]: per sequence, SDPA over cat(prefix of its group, its suffix) in ``dtype`` (causal for
    extend queries: query t of n sees keys up to P + S - n + t), on the device of the case's tensors. ``tensors``
    replaces q/K/V (e.g. leaves)."""
    x = dict(case, **(tensors or {}))
    group, prefix, suffix = (case[k].tolist() for k in ("group_indptr", "prefix_indptr", "suffix_indptr"))
    n = len(suffix) - 1
    query = list(range(n + 1)) if case["q_indptr"] is None else case["q_indptr"].tolist()
    outs = []
    for b in range(len(group) - 1):
        for i in range(group[b], group[b + 1]):
            if query[i + 1] == query[i]:
                continue
            k = torch.cat([x["prefix_k"][prefix[b]:prefix[b + 1]], x["suffix_k"][suffix[i]:suffix[i + 1]]])
            v = torch.cat([x["prefix_v"][prefix[b]:prefix[b + 1]], x["suffix_v"][suffix[i]:suffix[i + 1]]])
            q = x["q"][query[i]:query[i + 1]]
            nq, length = q.shape[0], k.shape[0]
            pos = torch.arange(length, device=q.device)
            mask = pos[None, :] <= (length - nq + pos[:nq])[:, None]
            o = F.scaled_dot_product_attention(q.to(dtype).transpose(0, 1), k.to(dtype).transpose(0, 1),
                                               v.to(dtype).transpose(0, 1), attn_mask=mask, enable_gqa=True)
            outs.append(o.transpose(0, 1))
    hq, d = case["q"].shape[1:]
    return torch.cat(outs) if outs else torch.zeros(0, hq, d, dtype=dtype, device=x["q"].device)

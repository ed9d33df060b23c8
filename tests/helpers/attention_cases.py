"""Ragged shared-prefix attention cases, the planned call, and the oracle: torch SDPA over each sequence's
[prefix; suffix] KV."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import rpo_kernels

KV_NAMES = ("prefix_k", "prefix_v", "suffix_k", "suffix_v")
DIFF_NAMES = ("q",) + KV_NAMES


def indptr(lengths) -> torch.Tensor:
    return torch.tensor([0] + list(lengths), dtype=torch.long).cumsum(0)


def ragged(n: int, lo: int, hi: int, gen: torch.Generator) -> list[int]:
    """n lengths drawn uniformly from lo..hi."""
    return torch.randint(lo, hi + 1, (n,), generator=gen).tolist()


def make_case(glens, plens, hq, hkv, d, *, slens=None, extend=False, max_q=None, dtype=torch.float32, seed=0,
              noncontig=False) -> dict:
    """q/K/V and index pointers (CPU int64) of a case: B = len(glens) groups of glens[b] sequences, prefix lengths
    plens, suffix lengths ragged in 1..129 unless given; ``extend``: 1..min(S, max_q) queries each (the extend op of
    ``attend``), else one query per sequence over its whole suffix (``q_indptr`` None: the decode cases of
    ``lane_decode_attention``). ``noncontig`` gives q and suffix_k non-contiguous strides."""
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


def plan_of(case: dict, device="cpu"):
    """``rpo_kernels.plan_shared_prefix`` of an extend case (its index pointers stay CPU tensors)."""
    return rpo_kernels.plan_shared_prefix(case["prefix_indptr"], case["suffix_indptr"], case["group_indptr"],
                                          case["q_indptr"], device=device)


def attend(case: dict, backend=None, *, plan=None, tensors: dict | None = None, **kw):
    """``rpo_kernels.shared_prefix_attention`` of an extend case (``tensors`` replaces q/K/V, e.g. leaves)."""
    x = dict(case, **(tensors or {}))
    plan = plan_of(case, x["q"].device) if plan is None else plan
    return rpo_kernels.shared_prefix_attention(*(x[n] for n in DIFF_NAMES), plan, backend=backend, **kw)


def on(device, case: dict) -> dict:
    """The case with q/K/V on ``device`` (the index pointers stay on the host, where plans take them)."""
    return dict(case, **{n: case[n].to(device) for n in DIFF_NAMES})


def _sequences(x: dict, dtype):
    """(q [n, Hq, D], k/v [L, Hkv, D] = [prefix of its group; its suffix], mask [n, L]) per sequence with queries,
    in ``dtype``: query t of n sees keys up to L - n + t (decode, ``q_indptr`` None: the one query sees all)."""
    group, prefix, suffix = (x[k].tolist() for k in ("group_indptr", "prefix_indptr", "suffix_indptr"))
    n = len(suffix) - 1
    query = list(range(n + 1)) if x["q_indptr"] is None else x["q_indptr"].tolist()
    for b in range(len(group) - 1):
        for i in range(group[b], group[b + 1]):
            if query[i + 1] == query[i]:
                continue
            k = torch.cat([x["prefix_k"][prefix[b]:prefix[b + 1]], x["suffix_k"][suffix[i]:suffix[i + 1]]])
            v = torch.cat([x["prefix_v"][prefix[b]:prefix[b + 1]], x["suffix_v"][suffix[i]:suffix[i + 1]]])
            q = x["q"][query[i]:query[i + 1]]
            nq, length = q.shape[0], k.shape[0]
            pos = torch.arange(length, device=q.device)
            yield q.to(dtype), k.to(dtype), v.to(dtype), pos[None, :] <= (length - nq + pos[:nq])[:, None]


def sdpa_oracle(case: dict, dtype=torch.float64, tensors: dict | None = None) -> torch.Tensor:
    """[total_q, Hq, D]: per sequence, torch SDPA over cat(prefix of its group, its suffix) in ``dtype`` (causal for
    extend queries), on the device of the case's tensors. ``tensors`` replaces q/K/V (e.g. leaves)."""
    x = dict(case, **(tensors or {}))
    outs = [F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask,
                                           enable_gqa=True).transpose(0, 1) for q, k, v, mask in _sequences(x, dtype)]
    hq, d = case["q"].shape[1:]
    return torch.cat(outs) if outs else torch.zeros(0, hq, d, dtype=dtype, device=x["q"].device)


def lse_oracle(case: dict, scale: float) -> torch.Tensor:
    """[total_q, Hq] float64: log sum_j exp(scale * q . k_j) over each query's keys (as ``sdpa_oracle``)."""
    lses = []
    for q, k, _, mask in _sequences(case, torch.float64):
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # GQA: [L, Hq, D]
        scores = scale * torch.einsum("nhd,lhd->nhl", q, k)
        lses.append(torch.logsumexp(scores.masked_fill(~mask[:, None, :], float("-inf")), -1))
    return torch.cat(lses)

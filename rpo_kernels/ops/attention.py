"""Public ``merge_attention_states`` and ``shared_prefix_attention``: validation and backend dispatch.

The math lives in ``rpo_kernels.reference.merge_attention_states`` and ``rpo_kernels.reference.shared_prefix_attention``
(the CPU path and the oracle); the Triton kernels in ``rpo_kernels.triton.shared_prefix_attention`` (+ ``_bwd``) and
``rpo_kernels.triton.merge_attention_states``.
"""

from __future__ import annotations

import torch

from .._checks import FLOAT_DTYPES, check_softmax_scale, check_tensor
from .._dispatch import resolve_backend
from ..reference.merge_attention_states import merge_attention_states_ref
from ..reference.shared_prefix_attention import RaggedLayout, shared_prefix_attention_ref

IMPLEMENTED = ("triton", "reference")
INDEX_DTYPES = (torch.int32, torch.int64)
# Largest head dim the Triton kernels take (one [rows, D] tile per operand).
TRITON_MAX_HEAD_DIM = 256


def _check_indptr(name: str, value, device, *, length: int | None, total: int, total_what: str,
                  strict: bool = False) -> tuple[int, ...]:
    """A 1-D int tensor that starts at 0, never decreases (strictly increases if ``strict``) and ends at ``total``."""
    check_tensor(name, value, ndim=1, dtypes=INDEX_DTYPES, device=device)
    if length is not None and value.numel() != length:
        raise ValueError(f"argument '{name}' must have {length} entries, got {value.numel()}")
    vals = tuple(int(x) for x in value.tolist())
    if not vals or vals[0] != 0:
        raise ValueError(f"argument '{name}' must start at 0, got {list(vals[:1])}")
    for i in range(len(vals) - 1):
        if vals[i + 1] < vals[i] or (strict and vals[i + 1] == vals[i]):
            what = "strictly increasing (no empty group)" if strict else "non-decreasing"
            raise ValueError(f"argument '{name}' must be {what}: entry {i + 1} is {vals[i + 1]} after {vals[i]}")
    if vals[-1] != total:
        raise ValueError(f"argument '{name}' must end at {total} ({total_what}), got {vals[-1]}")
    return vals


def _check_kv(name: str, value, q: torch.Tensor, hkv: int | None) -> None:
    check_tensor(name, value, ndim=3, device=q.device)
    if value.dtype != q.dtype:
        raise TypeError(f"argument '{name}' must have the dtype of 'q' ({q.dtype}), got {value.dtype}")
    if value.shape[2] != q.shape[2]:
        raise ValueError(f"argument '{name}' must have head dim D = {q.shape[2]} like 'q', got shape "
                         f"{tuple(value.shape)}")
    if hkv is not None and value.shape[1] != hkv:
        raise ValueError(f"argument '{name}' must have {hkv} KV heads like 'prefix_k', got shape {tuple(value.shape)}")


def validate_shared_prefix_inputs(q, prefix_k, prefix_v, prefix_indptr, suffix_k, suffix_v, suffix_indptr,
                                  group_indptr, q_indptr, softmax_scale) -> tuple[RaggedLayout, float]:
    """Check every argument of ``shared_prefix_attention``; returns (host layout, softmax scale)."""
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES)
    if q.shape[1] == 0 or q.shape[2] == 0:
        raise ValueError(f"argument 'q' must be [total_q, Hq, D] with Hq, D > 0, got shape {tuple(q.shape)}")
    _check_kv("prefix_k", prefix_k, q, None)
    hkv = prefix_k.shape[1]
    if hkv == 0 or q.shape[1] % hkv:
        raise ValueError(f"argument 'q' must have a number of heads Hq that is a multiple of the KV heads Hkv: "
                         f"Hq = {q.shape[1]}, Hkv = {hkv} (from 'prefix_k')")
    for name, value in (("prefix_v", prefix_v), ("suffix_k", suffix_k), ("suffix_v", suffix_v)):
        _check_kv(name, value, q, hkv)
    if prefix_v.shape[0] != prefix_k.shape[0]:
        raise ValueError(f"argument 'prefix_v' must have the rows of 'prefix_k' ({prefix_k.shape[0]}), "
                         f"got {prefix_v.shape[0]}")
    if suffix_v.shape[0] != suffix_k.shape[0]:
        raise ValueError(f"argument 'suffix_v' must have the rows of 'suffix_k' ({suffix_k.shape[0]}), "
                         f"got {suffix_v.shape[0]}")
    check_tensor("suffix_indptr", suffix_indptr, ndim=1, dtypes=INDEX_DTYPES, device=q.device)
    n = suffix_indptr.numel() - 1
    group = _check_indptr("group_indptr", group_indptr, q.device, length=None, total=n,
                          total_what="the number of sequences N, from 'suffix_indptr'", strict=True)
    prefix = _check_indptr("prefix_indptr", prefix_indptr, q.device, length=len(group), total=prefix_k.shape[0],
                           total_what="the rows of 'prefix_k'")
    suffix = _check_indptr("suffix_indptr", suffix_indptr, q.device, length=None, total=suffix_k.shape[0],
                           total_what="the rows of 'suffix_k'")
    if q_indptr is None:
        if q.shape[0] != n:
            raise ValueError(f"argument 'q' must have one row per sequence (N = {n}) when 'q_indptr' is None, "
                             f"got shape {tuple(q.shape)}")
        query = tuple(range(n + 1))
        for b in range(len(group) - 1):
            if prefix[b + 1] == prefix[b]:
                empty = [i for i in range(group[b], group[b + 1]) if suffix[i + 1] == suffix[i]]
                if empty:
                    raise ValueError(f"argument 'suffix_indptr': sequence {empty[0]} has an empty suffix and its "
                                     f"group {b} an empty prefix (see 'prefix_indptr'): its query attends to nothing")
    else:
        query = _check_indptr("q_indptr", q_indptr, q.device, length=n + 1, total=q.shape[0],
                              total_what="the rows of 'q'")
        for i in range(n):
            if query[i + 1] - query[i] > suffix[i + 1] - suffix[i]:
                raise ValueError(f"argument 'q_indptr': sequence {i} has {query[i + 1] - query[i]} queries but only "
                                 f"{suffix[i + 1] - suffix[i]} suffix tokens; queries are the last suffix tokens")
    scale = check_softmax_scale(softmax_scale, q.shape[2])
    return RaggedLayout(group, prefix, suffix, query, q_indptr is None), scale


def _implemented_for_call(q, q_indptr, tensors) -> tuple[tuple[str, ...], str]:
    """Backends for this call: the CUDA kernel covers decode in fp16/bf16 at head dim 64/128, without gradients."""
    from .. import cuda

    ok, why = cuda.supports_shared_prefix_attention(q, q_indptr=q_indptr)
    if ok and torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        ok, why = False, "the CUDA decode kernel has no backward; inputs require grad"
    return (("cuda",) + IMPLEMENTED if ok else IMPLEMENTED), why


def shared_prefix_attention(q, prefix_k, prefix_v, prefix_indptr, suffix_k, suffix_v, suffix_indptr, group_indptr,
                            *, q_indptr=None, softmax_scale=None, return_lse=False, backend=None):
    """Attention of G sequences per group over ONE shared prefix KV and each sequence's own suffix KV (cascade).

    B groups, N sequences; group b owns sequences ``group_indptr[b]:group_indptr[b+1]`` (none empty).

    Args:
        q: [total_q, Hq, D] fp32/fp16/bf16. Decode (``q_indptr`` None): one query per sequence, total_q = N. Extend:
            sequence i has the queries ``q_indptr[i]:q_indptr[i+1]``, its LAST suffix tokens (causal within the suffix).
        prefix_k, prefix_v: [total_prefix, Hkv, D], q's dtype and device; rows ``prefix_indptr[b]:prefix_indptr[b+1]``
            are group b's prefix (may be empty), stored once for the group.
        prefix_indptr: [B+1] int32/int64, 0 = first, non-decreasing, last = total_prefix.
        suffix_k, suffix_v: [total_suffix, Hkv, D]; rows ``suffix_indptr[i]:suffix_indptr[i+1]`` are sequence i's own
            tokens so far, the current one included (may be empty when its group's prefix is not).
        suffix_indptr: [N+1] int32/int64. group_indptr: [B+1], strictly increasing, last = N.
        q_indptr: None or [N+1]; at most as many queries as suffix tokens per sequence.
        softmax_scale: default 1/sqrt(D). return_lse: also return the log-sum-exp.
        backend: None (auto), "cuda" (decode, fp16/bf16, D 64/128, no grad), "triton" or "reference";
            see ``rpo_kernels.backends()``.

    Returns:
        out [total_q, Hq, D] in q's dtype (and lse [total_q, Hq] fp32 when ``return_lse``): for query t of sequence i
        in group b, at suffix position ``p = S_i - n_i + t``, with KV = [prefix of b ; suffix of i up to p] and
        ``s_j = softmax_scale * q . k_j`` (GQA: q head h uses KV head ``h // (Hq / Hkv)``)::

            out = sum_j softmax(s)_j v_j,    lse = log sum_j exp(s_j)

        i.e. ``scaled_dot_product_attention`` over the concatenated [prefix; suffix] KV of each sequence. The prefix
        is read once per group (not per sequence). Differentiable in q and all K/V (the extend variant trains).

    The index pointers are validated and planned on the host (each is copied from the device once per call).
    """
    layout, scale = validate_shared_prefix_inputs(q, prefix_k, prefix_v, prefix_indptr, suffix_k, suffix_v,
                                                  suffix_indptr, group_indptr, q_indptr, softmax_scale)
    implemented, why_not_cuda = _implemented_for_call(q, q_indptr, (q, prefix_k, prefix_v, suffix_k, suffix_v))
    if backend == "cuda" and "cuda" not in implemented:
        raise ValueError(f"shared_prefix_attention: backend 'cuda' cannot run this call: {why_not_cuda}")
    chosen = resolve_backend("shared_prefix_attention", q.device, backend, implemented)
    if chosen == "cuda":
        from .. import cuda

        out, lse = cuda.shared_prefix_attention(q, prefix_k, prefix_v, prefix_indptr, suffix_k, suffix_v,
                                                suffix_indptr, group_indptr, softmax_scale=scale, return_lse=True)
        return (out, lse) if return_lse else out
    if chosen == "triton" and q.shape[2] > TRITON_MAX_HEAD_DIM:
        raise ValueError(f"argument 'q': the Triton kernels take head dims up to {TRITON_MAX_HEAD_DIM}, "
                         f"got D = {q.shape[2]}; use backend='reference'")
    if chosen == "triton":
        from ..triton.shared_prefix_attention import TritonSharedPrefixAttention, make_plan

        plan = make_plan(layout, q.shape[1] // prefix_k.shape[1], q.device, q.dtype)
        out, lse = TritonSharedPrefixAttention.apply(q, prefix_k, prefix_v, suffix_k, suffix_v, plan, scale)
    else:
        out, lse = shared_prefix_attention_ref(q, prefix_k, prefix_v, prefix_indptr, suffix_k, suffix_v,
                                               suffix_indptr, group_indptr, q_indptr=q_indptr, softmax_scale=scale,
                                               layout=layout)
    return (out, lse) if return_lse else out


def merge_attention_states(out_a, lse_a, out_b, lse_b, *, backend=None):
    """Exact merge of two partial softmax attentions over disjoint key sets.

    Args:
        out_a, out_b: [N, H, D], one float dtype and device (attention over key sets A and B).
        lse_a, lse_b: [N, H] fp32, natural-log sum-exp of the scores of each set (-inf for an empty set).
        backend: None (auto), "cuda", "triton" or "reference".

    Returns:
        (out [N, H, D] in out_a's dtype, lse [N, H] fp32) with ``lse = log(exp(lse_a) + exp(lse_b))`` and
        ``out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b`` (out = 0, lse = -inf when both sets are empty).
        Differentiable in all four inputs.
    """
    check_tensor("out_a", out_a, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("out_b", out_b, ndim=3, device=out_a.device)
    if out_b.dtype != out_a.dtype:
        raise TypeError(f"argument 'out_b' must have the dtype of 'out_a' ({out_a.dtype}), got {out_b.dtype}")
    if out_b.shape != out_a.shape:
        raise ValueError(f"argument 'out_b' must have the shape of 'out_a' {tuple(out_a.shape)}, "
                         f"got {tuple(out_b.shape)}")
    for name, value in (("lse_a", lse_a), ("lse_b", lse_b)):
        check_tensor(name, value, ndim=2, dtypes=(torch.float32,), device=out_a.device)
        if value.shape != out_a.shape[:2]:
            raise ValueError(f"argument '{name}' must have shape {tuple(out_a.shape[:2])} ([N, H] of 'out_a'), "
                             f"got {tuple(value.shape)}")
    chosen = resolve_backend("merge_attention_states", out_a.device, backend, ("cuda",) + IMPLEMENTED)
    if chosen == "cuda":
        from .. import cuda

        return cuda.merge_attention_states(out_a, lse_a, out_b, lse_b)
    if chosen == "triton":
        from ..triton.merge_attention_states import TritonMergeAttentionStates

        return TritonMergeAttentionStates.apply(out_a, lse_a, out_b, lse_b)
    return merge_attention_states_ref(out_a, lse_a, out_b, lse_b)

"""Public ``plan_shared_prefix`` + ``shared_prefix_attention``: the extend (training) op of shared-prefix attention.

Plan once, run per layer: ``plan_shared_prefix`` validates the index pointers of a batch on the host, once; every
layer's ``shared_prefix_attention`` then checks only shapes, dtypes and devices against the plan (no host
synchronisation) and dispatches Triton -> reference. The math lives in ``rpo_kernels.reference.
shared_prefix_attention`` (the CPU path and the oracle; its two partial attentions merge by
``rpo_kernels.reference.merge_attention_states``); the Triton kernels in ``rpo_kernels.triton.shared_prefix_attention``
(+ ``_bwd``, and the merge in ``rpo_kernels.triton.merge_attention_states``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .._checks import FLOAT_DTYPES, check_softmax_scale, check_tensor
from .._dispatch import resolve_backend
from ..reference.shared_prefix_attention import RaggedLayout, shared_prefix_attention_ref

IMPLEMENTED = ("triton", "reference")
INDEX_DTYPES = (torch.int32, torch.int64)
# Largest head dim the Triton kernels take (one [rows, D] tile per operand).
TRITON_MAX_HEAD_DIM = 256


@dataclass(frozen=True)
class SharedPrefixPlan:
    """The validated layout of one extend batch (built by ``plan_shared_prefix``; read-only, shared by all layers).

    layout: the index pointers as tuples of host ints; device: where the batch's tensors live; backend_cache: tables a
    backend derives from the layout once per (GQA ratio, dtype) (the Triton segment and tile tables).
    """

    layout: RaggedLayout
    device: torch.device
    backend_cache: dict = field(default_factory=dict, repr=False, compare=False)


def _host_indptr(name: str, value, *, length: int | None, total: int | None, total_what: str = "",
                 strict: bool = False) -> tuple[int, ...]:
    """Host ints (a sequence or a 1-D int CPU tensor) that start at 0, never decrease (strictly increase if
    ``strict``) and, when ``total`` is given, end at it."""
    if isinstance(value, torch.Tensor):
        check_tensor(name, value, ndim=1, dtypes=INDEX_DTYPES, device=torch.device("cpu"))
        value = value.tolist()
    if not isinstance(value, Sequence) or any(type(x) is not int for x in value):
        raise TypeError(f"argument '{name}' must be a sequence of ints or a 1-D int CPU tensor, got {value!r}")
    vals = tuple(value)
    if length is not None and len(vals) != length:
        raise ValueError(f"argument '{name}' must have {length} entries, got {len(vals)}")
    if not vals or vals[0] != 0:
        raise ValueError(f"argument '{name}' must start at 0, got {list(vals[:1])}")
    for i in range(len(vals) - 1):
        if vals[i + 1] < vals[i] or (strict and vals[i + 1] == vals[i]):
            what = "strictly increasing (no empty group)" if strict else "non-decreasing"
            raise ValueError(f"argument '{name}' must be {what}: entry {i + 1} is {vals[i + 1]} after {vals[i]}")
    if total is not None and vals[-1] != total:
        raise ValueError(f"argument '{name}' must end at {total} ({total_what}), got {vals[-1]}")
    return vals


def plan_shared_prefix(prefix_indptr, suffix_indptr, group_indptr, q_indptr, *,
                       device: torch.device | str = "cpu") -> SharedPrefixPlan:
    """Validate and plan one extend batch of B groups and N sequences (host ints: no device synchronisation).

    Args (each a sequence of ints or a 1-D int32/int64 CPU tensor, starting at 0, non-decreasing):
        prefix_indptr [B+1]: group b's prefix KV rows ``prefix_indptr[b]:prefix_indptr[b+1]`` (may be empty).
        suffix_indptr [N+1]: sequence i's own KV rows, its tokens so far.
        group_indptr [B+1]: group b's sequences; strictly increasing (no empty group), last = N.
        q_indptr [N+1]: sequence i's queries, its LAST ``q_indptr[i+1] - q_indptr[i]`` suffix tokens (at most S_i).
        device: where the tensors of ``shared_prefix_attention`` calls with this plan live.

    The plan is reused by every layer (and every recomputation under gradient checkpointing); a backend's device
    tables are derived from it on first use, once per (GQA ratio, dtype), in one host-to-device transfer.
    """
    suffix = _host_indptr("suffix_indptr", suffix_indptr, length=None, total=None)
    n = len(suffix) - 1
    group = _host_indptr("group_indptr", group_indptr, length=None, total=n,
                         total_what="the number of sequences N, from 'suffix_indptr'", strict=True)
    prefix = _host_indptr("prefix_indptr", prefix_indptr, length=len(group), total=None)
    query = _host_indptr("q_indptr", q_indptr, length=n + 1, total=None)
    for i in range(n):
        if query[i + 1] - query[i] > suffix[i + 1] - suffix[i]:
            raise ValueError(f"argument 'q_indptr': sequence {i} has {query[i + 1] - query[i]} queries but only "
                             f"{suffix[i + 1] - suffix[i]} suffix tokens; queries are the last suffix tokens")
    device = torch.empty(0, device=device).device  # normalised: "cuda" -> "cuda:0", as a tensor's .device reads
    return SharedPrefixPlan(RaggedLayout(group, prefix, suffix, query), device)


def _check_inputs(q, prefix_k, prefix_v, suffix_k, suffix_v, plan) -> None:
    """Shapes, dtypes and devices of one call against its plan (metadata only: no host synchronisation)."""
    if not isinstance(plan, SharedPrefixPlan):
        raise TypeError(f"argument 'plan' must be a SharedPrefixPlan (from rpo_kernels.plan_shared_prefix), "
                        f"got {type(plan).__name__}")
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES, device=plan.device)
    hq, d = q.shape[1], q.shape[2]
    hkv = check_tensor("prefix_k", prefix_k, ndim=3).shape[1]
    if hq == 0 or d == 0 or hkv == 0 or hq % hkv:
        raise ValueError(f"argument 'q' must be [total_q, Hq, D] with Hq, D > 0, Hq a multiple of the KV heads Hkv: "
                         f"shape {tuple(q.shape)}, Hkv = {hkv} (from 'prefix_k')")
    lay = plan.layout
    for name, value, rows, indptr in (("q", q, lay.query[-1], "q_indptr"),
                                      ("prefix_k", prefix_k, lay.prefix[-1], "prefix_indptr"),
                                      ("prefix_v", prefix_v, lay.prefix[-1], "prefix_indptr"),
                                      ("suffix_k", suffix_k, lay.suffix[-1], "suffix_indptr"),
                                      ("suffix_v", suffix_v, lay.suffix[-1], "suffix_indptr")):
        check_tensor(name, value, ndim=3, device=q.device)
        if value.dtype != q.dtype:
            raise TypeError(f"argument '{name}' must have the dtype of 'q' ({q.dtype}), got {value.dtype}")
        heads = hq if name == "q" else hkv
        if tuple(value.shape) != (rows, heads, d):
            raise ValueError(f"argument '{name}' must have shape ({rows}, {heads}, {d}) (rows: the plan's "
                             f"{indptr}[-1]; heads and D as 'q' and 'prefix_k'), got {tuple(value.shape)}")


def _triton_tables(plan: SharedPrefixPlan, rep: int, dtype: torch.dtype):
    """The Triton segment/tile tables of ``plan`` for GQA ratio ``rep`` and ``dtype``, built once and cached."""
    from ..triton.shared_prefix_attention import plan_segments

    key = ("triton", rep, dtype)
    if key not in plan.backend_cache:
        lay = plan.layout
        plan.backend_cache[key] = plan_segments(lay.prefix_segments(), lay.suffix_segments(), rep, plan.device, dtype,
                                                decode=False)
    return plan.backend_cache[key]


def shared_prefix_attention(q, prefix_k, prefix_v, suffix_k, suffix_v, plan: SharedPrefixPlan, *,
                            softmax_scale=None, return_lse=False, backend=None):
    """Attention of G sequences per group over ONE shared prefix KV and each sequence's own suffix KV (cascade),
    extend form: each sequence's queries are its last suffix tokens (causal within the suffix). Differentiable.

    Args:
        q: [total_q, Hq, D] fp32/fp16/bf16 on the plan's device; rows ``q_indptr[i]:q_indptr[i+1]`` are sequence i's.
        prefix_k, prefix_v: [total_prefix, Hkv, D], q's dtype and device; rows ``prefix_indptr[b]:prefix_indptr[b+1]``
            are group b's prefix, stored once for the group. Hq must be a multiple of Hkv (GQA).
        suffix_k, suffix_v: [total_suffix, Hkv, D]; rows ``suffix_indptr[i]:suffix_indptr[i+1]`` are sequence i's
            own tokens.
        plan: ``plan_shared_prefix`` of this batch, shared by every layer. softmax_scale: default 1/sqrt(D).
        return_lse: also return the log-sum-exp. backend: None (auto: Triton on a GPU, else the reference),
            "triton" or "reference"; see ``rpo_kernels.backends()``.

    Returns:
        out [total_q, Hq, D] in q's dtype (and lse [total_q, Hq] fp32 when ``return_lse``): for query t of sequence i
        (n_i queries, S_i suffix tokens) in group b, at suffix position ``p = S_i - n_i + t``, with KV = [prefix of
        b ; suffix of i up to p] and ``s_j = softmax_scale * q . k_j`` (q head h uses KV head ``h // (Hq / Hkv)``)::

            out = sum_j softmax(s)_j v_j,    lse = log sum_j exp(s_j)

        i.e. ``scaled_dot_product_attention`` over the concatenated [prefix; suffix] KV of each sequence. The prefix
        is read once per group (not per sequence). Gradients flow into q and all four K/V tensors.
    """
    _check_inputs(q, prefix_k, prefix_v, suffix_k, suffix_v, plan)
    scale = check_softmax_scale(softmax_scale, q.shape[2])
    chosen = resolve_backend("shared_prefix_attention", q.device, backend, IMPLEMENTED)
    if chosen == "triton" and q.shape[2] > TRITON_MAX_HEAD_DIM:
        raise ValueError(f"argument 'q': the Triton kernels take head dims up to {TRITON_MAX_HEAD_DIM}, "
                         f"got D = {q.shape[2]}; use backend='reference'")
    if chosen == "triton":
        from ..triton.shared_prefix_attention import TritonSharedPrefixAttention

        tables = _triton_tables(plan, q.shape[1] // prefix_k.shape[1], q.dtype)
        out, lse = TritonSharedPrefixAttention.apply(q, prefix_k, prefix_v, suffix_k, suffix_v, tables, scale)
    else:
        out, lse = shared_prefix_attention_ref(q, prefix_k, prefix_v, suffix_k, suffix_v, plan.layout,
                                               softmax_scale=scale)
    return (out, lse) if return_lse else out

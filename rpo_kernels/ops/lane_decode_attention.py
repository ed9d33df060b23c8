"""Public ``plan_lane_decode`` and ``lane_decode_attention``: the decode op of shared-prefix attention.

A decode step attends every running sequence to its group's prefix and to its own suffix, in every layer, with the
same layout. The plan/run split makes that layout a ``LanePlan`` built ONCE per step from host integers (validated
there, copied to the device in one transfer); each layer then runs ``lane_decode_attention`` on the KV lanes where
they are stored, with no host synchronisation and no gather of KV. The math: ``rpo_kernels.reference.
lane_decode_attention``; its backends: the CUDA kernel (``csrc/kernels/lane_decode.cuh``), Triton and the reference,
chosen in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .. import cuda
from .._checks import FLOAT_DTYPES, check_softmax_scale, check_tensor
from .._dispatch import resolve_backend
from ..reference.lane_decode_attention import lane_decode_attention_ref
from .shared_prefix_attention import TRITON_MAX_HEAD_DIM

IMPLEMENTED = ("triton", "reference")


@dataclass(frozen=True)
class LanePlan:
    """Where the queries of one decode step go (built by ``plan_lane_decode``; read-only, shared by all layers).

    prefix_lo, prefix_lanes: the prefix lanes read, ``prefix_lo:prefix_lo + prefix_lanes``; group_width: queries per
    prefix lane at most; prefix_rows [N] int64: query n's row ``(lane - prefix_lo) * group_width + rank`` (None
    when that is n: the queries come group by group in lane order, every lane full);
    prefix_len: keys read per prefix lane (the longest prefix); prefix_bias [prefix_lanes, 1, 1, prefix_len] fp32,
    0 for a stored key, -inf past the lane's length; prefix_has_keys [prefix_lanes] bool: the lane's length > 0 (None
    when every lane in the range has keys).
    suffix_lo, suffix_lanes, suffix_rows [N], suffix_len, suffix_bias, suffix_has_keys: the same for the suffix
    lanes (one query per lane). prefix_shape/suffix_shape: (lanes, capacity) of the buffers the plan was made for.
    host: the validated arguments (prefix_lane, prefix_length, suffix_lane, suffix_length) as tuples of ints;
    backend_cache: tables a backend derives from them once per plan.
    """

    num_queries: int
    prefix_lo: int
    prefix_lanes: int
    group_width: int
    prefix_rows: torch.Tensor | None
    prefix_len: int
    prefix_bias: torch.Tensor
    prefix_has_keys: torch.Tensor | None
    suffix_lo: int
    suffix_lanes: int
    suffix_rows: torch.Tensor | None
    suffix_len: int
    suffix_bias: torch.Tensor
    suffix_has_keys: torch.Tensor | None
    prefix_shape: tuple[int, int]
    suffix_shape: tuple[int, int]
    host: tuple[tuple[int, ...], ...] = field(repr=False)
    backend_cache: dict = field(default_factory=dict, repr=False, compare=False)


NAMES = ("prefix_lane", "prefix_length", "suffix_lane", "suffix_length")


def _host_lists(values: list, limits: list[tuple[int, str]]) -> list[list[int]]:
    """The four per-query arguments as lists of ints, each checked against 0 <= value < limit."""
    lists = [v.tolist() if isinstance(v, torch.Tensor) else list(v) for v in values]
    n = len(lists[0])
    if n == 0:
        raise ValueError("argument 'prefix_lane' is empty: a decode step has at least one query")
    for name, x, (limit, what) in zip(NAMES, lists, limits):
        if len(x) != n:
            raise ValueError(f"argument '{name}' must have {n} entries (one per query), got {len(x)}")
        if any(type(v) is not int for v in x):
            raise TypeError(f"argument '{name}' must hold ints, got {x!r}")
        if min(x) < 0 or max(x) >= limit:
            i = next(i for i, v in enumerate(x) if not 0 <= v < limit)
            raise ValueError(f"argument '{name}': entry {i} is {x[i]}, expected 0 <= value < {limit} ({what})")
    return lists


def plan_lane_decode(prefix_lane: Sequence[int], prefix_length: Sequence[int], suffix_lane: Sequence[int],
                     suffix_length: Sequence[int], *, prefix_shape: tuple[int, int], suffix_shape: tuple[int, int],
                     device: torch.device | str = "cpu") -> LanePlan:
    """Validate and plan one decode step of N queries (host ints; one transfer to ``device``).

    Args:
        prefix_lane [N]: the prefix lane of query n's group; queries of one group share it. prefix_length [N]: keys
            stored in that lane (equal for queries of one lane, may be 0).
        suffix_lane [N]: query n's own suffix lane (distinct). suffix_length [N]: its tokens there, the current one
            included (>= 1 unless the prefix is not empty).
        prefix_shape, suffix_shape: (lanes, capacity) of the prefix and suffix buffers ([lanes, Hkv, capacity, D]).
    """
    p_lane, p_len, s_lane, s_len = _host_lists(
        [prefix_lane, prefix_length, suffix_lane, suffix_length],
        [(prefix_shape[0], "prefix lanes in the buffer"),
         (prefix_shape[1] + 1, "the prefix buffer's capacity, inclusive"),
         (suffix_shape[0], "suffix lanes in the buffer"),
         (suffix_shape[1] + 1, "the suffix buffer's capacity, inclusive")])
    n = len(p_lane)
    p_lo, s_lo = min(p_lane), min(s_lane)
    p_count, s_count = max(p_lane) - p_lo + 1, max(s_lane) - s_lo + 1
    lens, s_lens = [0] * p_count, [0] * s_count
    seen, rank = [0] * p_count, []
    for i, (lane, length) in enumerate(zip(p_lane, p_len)):
        a = lane - p_lo
        if seen[a] and lens[a] != length:
            raise ValueError(f"argument 'prefix_length': entry {i} is {length} but another query of prefix lane "
                             f"{lane} gives {lens[a]}; queries of a lane share its prefix")
        lens[a] = length
        rank.append(seen[a])  # rank of the query among the earlier queries of its prefix lane
        seen[a] += 1
    for i, (lane, length) in enumerate(zip(s_lane, s_len)):
        if s_lens[lane - s_lo] or (length == 0 and lane in s_lane[:i]):
            raise ValueError(f"argument 'suffix_lane': lane {lane} is given to more than one query; each sequence "
                             f"owns its suffix lane")
        s_lens[lane - s_lo] = length
        if length == 0 and p_len[i] == 0:
            raise ValueError(f"query {i} has an empty prefix and an empty suffix: it attends to nothing")
    width = max(seen)
    p_max, s_max = max(p_len), max(s_len)
    p_row_ids = [(lane - p_lo) * width + r for lane, r in zip(p_lane, rank)]
    s_row_ids = [lane - s_lo for lane in s_lane]
    ints = torch.tensor(p_row_ids + s_row_ids + lens + s_lens)
    p_lens_t, s_lens_t = ints[2 * n:2 * n + p_count], ints[2 * n + p_count:]
    keys_p, keys_s = torch.arange(p_max), torch.arange(s_max)
    biases = torch.cat([torch.where(keys_p < p_lens_t[:, None], 0.0, float("-inf")).flatten(),
                        torch.where(keys_s < s_lens_t[:, None], 0.0, float("-inf")).flatten(),
                        (ints[2 * n:] > 0).float()]).to(device)
    rows = ints[:2 * n].to(device)
    p_bias, s_bias = biases[:p_count * p_max], biases[p_count * p_max:p_count * p_max + s_count * s_max]
    has_keys = biases[p_count * p_max + s_count * s_max:] > 0
    host = (tuple(p_lane), tuple(p_len), tuple(s_lane), tuple(s_len))
    p_rows = None if p_count * width == n and p_row_ids == list(range(n)) else rows[:n]
    s_rows = None if s_count == n and s_row_ids == list(range(n)) else rows[n:]
    return LanePlan(n, p_lo, p_count, width, p_rows, p_max, p_bias.view(p_count, 1, 1, p_max),
                    None if min(lens) > 0 else has_keys[:p_count], s_lo, s_count, s_rows, s_max,
                    s_bias.view(s_count, 1, 1, s_max), None if min(s_lens) > 0 else has_keys[p_count:],
                    (prefix_shape[0], prefix_shape[1]), (suffix_shape[0], suffix_shape[1]), host)


def _check_lanes(name: str, value, q: torch.Tensor, shape: tuple[int, int], hkv: int | None) -> None:
    check_tensor(name, value, ndim=4, device=q.device)
    if value.dtype != q.dtype:
        raise TypeError(f"argument '{name}' must have the dtype of 'q' ({q.dtype}), got {value.dtype}")
    lanes, heads, cap, d = value.shape
    if (lanes, cap) != shape or d != q.shape[2] or (hkv is not None and heads != hkv):
        raise ValueError(f"argument '{name}' must be [lanes, Hkv, capacity, D] = [{shape[0]}, "
                         f"{hkv if hkv is not None else 'Hkv'}, {shape[1]}, {q.shape[2]}] for this plan, got "
                         f"{tuple(value.shape)}")


def lane_decode_attention(q, prefix_k, prefix_v, suffix_k, suffix_v, plan: LanePlan, *, softmax_scale=None,
                          return_lse=False, backend=None):
    """Decode attention of N sequences over their group's prefix lane and their own suffix lane, in place.

    Args:
        q: [N, Hq, D] fp32/fp16/bf16, one query per sequence, in the plan's query order.
        prefix_k, prefix_v: [Lp, Hkv, Pcap, D] prefix lanes (q's dtype and device); suffix_k, suffix_v:
            [Ls, Hkv, Scap, D] suffix lanes. Hq must be a multiple of Hkv (GQA: head h reads KV head h // (Hq/Hkv)).
        plan: ``plan_lane_decode`` of this step (shared by all layers). softmax_scale: default 1/sqrt(D).
        backend: None (auto: CUDA -> Triton -> reference, see ``rpo_kernels.backends()``), "cuda" (the compiled
            kernel: fp16/bf16, head dim 64 or 128, forward only), "triton" (forward only) or "reference" (torch
            ops, any device). Every backend reads the lanes in place.

    Returns:
        out [N, Hq, D] in q's dtype (and lse [N, Hq] fp32 when ``return_lse``): softmax attention of each query over
        [its group's prefix keys ; its own suffix keys] (``shared_prefix_attention`` for one query per sequence, the
        last of its suffix).
    """
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES)
    if q.shape[0] != plan.num_queries:
        raise ValueError(f"argument 'q' must have {plan.num_queries} rows (the plan's queries), got {q.shape[0]}")
    _check_lanes("prefix_k", prefix_k, q, plan.prefix_shape, None)
    hkv = prefix_k.shape[1]
    if q.shape[1] % hkv:
        raise ValueError(f"argument 'q' must have a number of heads that is a multiple of the KV heads: "
                         f"Hq = {q.shape[1]}, Hkv = {hkv} (from 'prefix_k')")
    _check_lanes("prefix_v", prefix_v, q, plan.prefix_shape, hkv)
    _check_lanes("suffix_k", suffix_k, q, plan.suffix_shape, hkv)
    _check_lanes("suffix_v", suffix_v, q, plan.suffix_shape, hkv)
    if plan.suffix_bias.device != q.device:
        raise ValueError(f"argument 'plan' was made for {plan.suffix_bias.device}, 'q' is on {q.device}")
    scale = check_softmax_scale(softmax_scale, q.shape[2])
    cuda_ok, why_not_cuda = (cuda.supports_lane_decode(q, prefix_k, prefix_v, suffix_k, suffix_v)
                             if q.is_cuda or backend == "cuda" else (False, "not a CUDA tensor"))
    if backend == "cuda" and not cuda_ok:
        raise ValueError(f"lane_decode_attention: backend 'cuda' cannot run this call: {why_not_cuda}")
    implemented = ("cuda",) + IMPLEMENTED if cuda_ok else IMPLEMENTED
    chosen = resolve_backend("lane_decode_attention", q.device, backend, implemented)
    if chosen == "triton" and q.shape[2] > TRITON_MAX_HEAD_DIM:
        raise ValueError(f"argument 'q': the Triton kernels take head dims up to {TRITON_MAX_HEAD_DIM}, "
                         f"got D = {q.shape[2]}; use backend='reference'")
    if chosen == "cuda":
        out, lse = cuda.lane_decode_attention(q, prefix_k, prefix_v, suffix_k, suffix_v, plan, scale)
    elif chosen == "triton":
        from ..triton.lane_decode_attention import lane_decode_triton

        out, lse = lane_decode_triton(q, prefix_k, prefix_v, suffix_k, suffix_v, plan, scale)
    else:
        out, lse = lane_decode_attention_ref(q, prefix_k, prefix_v, suffix_k, suffix_v, plan, scale)
    return (out, lse) if return_lse else out

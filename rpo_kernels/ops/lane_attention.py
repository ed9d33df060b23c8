"""Public ``plan_lane_decode`` and ``lane_decode_attention``: the planned decode path of shared-prefix attention.

A decode step attends every running sequence to its group's prefix and to its own suffix, in every layer, with the
same layout. The plan/run split makes that layout a ``LanePlan`` built ONCE per step from host integers (validated
there, copied to the device in one transfer); each layer then runs ``lane_decode_attention`` on the KV lanes where
they are stored, with no host synchronisation and no gather of KV. The math: ``rpo_kernels.reference.
lane_decode_attention`` (same result as ``shared_prefix_attention`` on the packed form of the same KV).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .._checks import FLOAT_DTYPES, check_tensor
from .._dispatch import resolve_backend
from ..reference.lane_decode_attention import lane_decode_attention_ref
from .attention import TRITON_MAX_HEAD_DIM

IMPLEMENTED = ("triton", "reference")


@dataclass(frozen=True)
class LanePlan:
    """Where the queries of one decode step go (built by ``plan_lane_decode``; read-only, shared by all layers).

    prefix_lo, prefix_lanes: the prefix lanes read, ``prefix_lo:prefix_lo + prefix_lanes``; group_width: queries per
    prefix lane at most; prefix_rows [N] int64: query n's row ``(lane - prefix_lo) * group_width + rank``;
    prefix_len: keys read per prefix lane (the longest prefix); prefix_bias [prefix_lanes, 1, 1, prefix_len] fp32,
    0 for a stored key, -inf past the lane's length; prefix_has_keys [prefix_lanes] bool: the lane's length > 0.
    suffix_lo, suffix_lanes, suffix_rows [N], suffix_len, suffix_bias, suffix_has_keys: the same for the suffix
    lanes (one query per lane). prefix_shape/suffix_shape: (lanes, capacity) of the buffers the plan was made for.
    host: the validated arguments (prefix_lane, prefix_length, suffix_lane, suffix_length) as CPU int64 tensors;
    backend_cache: tables a backend derives from them once per plan.
    """

    num_queries: int
    prefix_lo: int
    prefix_lanes: int
    group_width: int
    prefix_rows: torch.Tensor
    prefix_len: int
    prefix_bias: torch.Tensor
    prefix_has_keys: torch.Tensor
    suffix_lo: int
    suffix_lanes: int
    suffix_rows: torch.Tensor
    suffix_len: int
    suffix_bias: torch.Tensor
    suffix_has_keys: torch.Tensor
    prefix_shape: tuple[int, int]
    suffix_shape: tuple[int, int]
    host: tuple[torch.Tensor, ...] = field(repr=False)
    backend_cache: dict = field(default_factory=dict, repr=False, compare=False)


NAMES = ("prefix_lane", "prefix_length", "suffix_lane", "suffix_length")


def _host_args(values: list, limits: list[tuple[int, str]]) -> torch.Tensor:
    """[4, N] int64 host tensor of the four per-query arguments, each checked against 0 <= value < limit."""
    lists = [v.tolist() if isinstance(v, torch.Tensor) else list(v) for v in values]
    n = len(lists[0])
    if n == 0:
        raise ValueError("argument 'prefix_lane' is empty: a decode step has at least one query")
    for name, x in zip(NAMES[1:], lists[1:]):
        if len(x) != n:
            raise ValueError(f"argument '{name}' must have {n} entries (one per query), got {len(x)}")
    try:
        host = torch.tensor(lists)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"arguments {NAMES} must be flat sequences of ints ({exc})") from None
    if host.dtype != torch.int64:
        name = next(k for k, x in zip(NAMES, lists) if any(not isinstance(v, int) for v in x))
        raise TypeError(f"argument '{name}' must hold ints, got {lists[NAMES.index(name)]!r}")
    bad = ((host < 0) | (host >= torch.tensor([lim for lim, _ in limits])[:, None])).nonzero()
    if bad.numel():
        arg, i = (int(x) for x in bad[0])
        raise ValueError(f"argument '{NAMES[arg]}': entry {i} is {lists[arg][i]}, expected 0 <= value < "
                         f"{limits[arg][0]} ({limits[arg][1]})")
    return host


def _bias(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return torch.where(torch.arange(width)[None, :] < lengths[:, None], 0.0, float("-inf"))


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
    host = _host_args([prefix_lane, prefix_length, suffix_lane, suffix_length],
                      [(prefix_shape[0], "prefix lanes in the buffer"),
                       (prefix_shape[1] + 1, "the prefix buffer's capacity, inclusive"),
                       (suffix_shape[0], "suffix lanes in the buffer"),
                       (suffix_shape[1] + 1, "the suffix buffer's capacity, inclusive")])
    p_lane, p_len, s_lane, s_len = host
    n = p_lane.numel()
    p_lo, s_lo = int(p_lane.min()), int(s_lane.min())
    p_count, s_count = int(p_lane.max()) - p_lo + 1, int(s_lane.max()) - s_lo + 1
    lens = torch.zeros(p_count, dtype=torch.long).index_put_((p_lane - p_lo,), p_len)
    clash = (lens[p_lane - p_lo] != p_len).nonzero()
    if clash.numel():
        i = int(clash[0])
        raise ValueError(f"argument 'prefix_length': entry {i} is {int(p_len[i])} but another query of prefix lane "
                         f"{int(p_lane[i])} gives {int(lens[p_lane[i] - p_lo])}; queries of a lane share its prefix")
    owners = torch.zeros(s_count, dtype=torch.long).index_add_(0, s_lane - s_lo, torch.ones_like(s_lane))
    if int(owners.max()) > 1:
        dup = int(owners.argmax()) + s_lo
        raise ValueError(f"argument 'suffix_lane': lane {dup} is given to more than one query; each sequence owns "
                         f"its suffix lane")
    empty = ((p_len == 0) & (s_len == 0)).nonzero()
    if empty.numel():
        raise ValueError(f"query {int(empty[0])} has an empty prefix and an empty suffix: it attends to nothing")
    # rank of each query among the earlier queries of its prefix lane
    order = torch.sort(p_lane, stable=True).indices
    sorted_lane = p_lane[order]
    first = torch.searchsorted(sorted_lane, sorted_lane, right=False)
    rank = torch.empty_like(p_lane).index_put_((order,), torch.arange(n) - first)
    width = int(rank.max()) + 1
    s_lens = torch.zeros(s_count, dtype=torch.long).index_put_((s_lane - s_lo,), s_len)
    p_max, s_max = int(p_len.max()), int(s_len.max())
    rows = torch.cat([(p_lane - p_lo) * width + rank, s_lane - s_lo])
    biases = torch.cat([_bias(lens, p_max).flatten(), _bias(s_lens, s_max).flatten()])
    has_keys = torch.cat([lens > 0, s_lens > 0])
    rows, biases, has_keys = rows.to(device), biases.to(device), has_keys.to(device)
    p_bias, s_bias = biases[:p_count * p_max].view(p_count, 1, 1, p_max), biases[p_count * p_max:]
    return LanePlan(n, p_lo, p_count, width, rows[:n], p_max, p_bias, has_keys[:p_count], s_lo, s_count, rows[n:],
                    s_max, s_bias.view(s_count, 1, 1, s_max), has_keys[p_count:],
                    (prefix_shape[0], prefix_shape[1]), (suffix_shape[0], suffix_shape[1]),
                    (p_lane, p_len, s_lane, s_len))


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
        backend: None (auto: Triton on a GPU, else the reference), "triton" (forward only; reads the lanes in place
            through strided views) or "reference" (torch ops, any device).

    Returns:
        out [N, Hq, D] in q's dtype (and lse [N, Hq] fp32 when ``return_lse``): softmax attention of each query over
        [its group's prefix keys ; its own suffix keys], as ``shared_prefix_attention`` in decode form.
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
    if plan.prefix_rows.device != q.device:
        raise ValueError(f"argument 'plan' was made for {plan.prefix_rows.device}, 'q' is on {q.device}")
    if softmax_scale is None:
        scale = 1.0 / math.sqrt(q.shape[2])
    elif isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)) or not (
            0 < softmax_scale < math.inf):
        raise ValueError(f"argument 'softmax_scale' must be a finite number > 0 or None, got {softmax_scale!r}")
    else:
        scale = float(softmax_scale)
    chosen = resolve_backend("lane_decode_attention", q.device, backend, IMPLEMENTED)
    if chosen == "triton" and q.shape[2] > TRITON_MAX_HEAD_DIM:
        raise ValueError(f"argument 'q': the Triton kernels take head dims up to {TRITON_MAX_HEAD_DIM}, "
                         f"got D = {q.shape[2]}; use backend='reference'")
    if chosen == "triton":
        from ..triton.lane_decode_attention import lane_decode_triton

        out, lse = lane_decode_triton(q, prefix_k, prefix_v, suffix_k, suffix_v, plan, scale)
    else:
        out, lse = lane_decode_attention_ref(q, prefix_k, prefix_v, suffix_k, suffix_v, plan, scale)
    return (out, lse) if return_lse else out

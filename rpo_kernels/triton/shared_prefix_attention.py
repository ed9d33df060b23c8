"""Triton kernels for ``shared_prefix_attention``: cascade attention over one shared prefix KV per group.

Semantics: ``rpo_kernels.reference.shared_prefix_attention``. Both parts of the attention are "segments": a run of
query rows that sees a run of KV rows, query t seeing keys ``j <= t + off``. The prefix segment of a group holds ALL
the queries of its G sequences (off = prefix length: no mask); the suffix segment of a sequence holds its queries
(off = suffix length - its query count: causal). One kernel computes a segment's partial attention:

- the M dimension of each ``tl.dot`` is (query, head) pairs of one KV head: ``BLOCK_M`` rows = queries x the Hq/Hkv
  heads sharing that KV head (GQA), so a program streams its KV rows once for all of them; for a prefix segment that
  is every query of the group, which is what reads the prefix once per group instead of once per sequence;
- programs = (M tile of a segment, KV head, KV split); long prefixes are split (split-KV) into partial states;
- online softmax in base 2 with fp32 accumulators; partial (out, lse) go to fp32 buffers.

The partial states of the prefix splits and of the suffix are then merged exactly by their log-sum-exp
(``merge_attention_states`` kernel). Backward kernels: ``shared_prefix_attention_bwd``.

Design choice (split parts + merge rather than one fused kernel): one kernel serves both parts and the backward, the
prefix tile keeps all G sequences' rows busy, and split-KV needs a merge anyway. A fused kernel would walk each
sequence's suffix with the whole group tile, most rows masked. Not yet measured against a fused variant on a GPU.
16-bit tiles go to the tensor cores as stored; fp32 tiles use IEEE fp32 dots (no TF32); in the interpreter every tile
is upcast after loading (the interpreter computes bf16 wrongly). Layout: kernel, plan, launchers, autograd.Function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .common import LOG2E, grid_splits, launch_options, precision
from .merge_attention_states import merge_states
from .segments import (
    LAUNCH_OPTIONS,
    MIN_KEYS_PER_SPLIT,
    SPEC_HEAD_DIMS,
    Tiles,
    _segment_rows,
    spec_settings,
    tiles_for,
)
from .shared_prefix_attention_bwd import shared_prefix_backward


@triton.jit
def _segment_fwd_kernel(q_ptr, stride_qn, stride_qh, stride_qd,
                        k_ptr, stride_kn, stride_kh, stride_kd,
                        v_ptr, stride_vn, stride_vh, stride_vd,
                        o_ptr, stride_os, stride_on, stride_oh,
                        lse_ptr, stride_ls, stride_ln,
                        seg_ptr, tile_ptr, REP, KV_PER_SPLIT, qk_scale, D,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                        UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Partial attention of one (M tile, KV head, split): o[split, row, head, :] (fp32) and lse[split, row, head].

    s = (q . k) * scale * log2(e);  m, l, acc by the online softmax;  o = acc / l;  lse = (m + log2 l) * ln 2.
    Rows that see no key in this split get o = 0, lse = -inf. o is contiguous in its last dim.
    """
    tile = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    m0, q_start, q_len, kv_start, kv_len, off, row_ok, qrow, head, t, kv_hi = _segment_rows(
        seg_ptr, tile_ptr, tile, kvh, REP, BLOCK_M)
    ds = tl.arange(0, BLOCK_D)
    d_ok = ds < D
    q = tl.load(q_ptr + qrow[:, None] * stride_qn + head[:, None] * stride_qh + ds[None, :] * stride_qd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    limit = t + off
    lo = split * KV_PER_SPLIT
    hi = tl.minimum(kv_hi, lo + KV_PER_SPLIT)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < hi
        kv_row = (kv_start + cols).to(tl.int64)
        k = tl.load(k_ptr + kv_row[None, :] * stride_kn + kvh * stride_kh + ds[:, None] * stride_kd,
                    mask=d_ok[:, None] & col_ok[None, :], other=0.0)
        v = tl.load(v_ptr + kv_row[:, None] * stride_vn + kvh * stride_vh + ds[None, :] * stride_vd,
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(col_ok[None, :] & (cols[None, :] <= limit[:, None]), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    seen = l_i > 0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(seen, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    o_row = split * stride_os + qrow * stride_on + head * stride_oh
    tl.store(o_ptr + o_row[:, None] + ds[None, :], out, mask=row_ok[:, None] & d_ok[None, :])
    tl.store(lse_ptr + split * stride_ls + qrow * stride_ln + head, lse, mask=row_ok)


def _tiles(lengths: list[int], block: int) -> list[tuple[int, int]]:
    """(segment, start) of every ``block``-row tile of segments with ``lengths`` rows."""
    return [(i, s) for i, n in enumerate(lengths) for s in range(0, n, block)]


@dataclass
class Plan:
    """Segment tables [*, 5] (q_start, q_len, kv_start, kv_len, off) and tile tables [*, 2] (segment, start)."""

    prefix_seg: torch.Tensor
    suffix_seg: torch.Tensor
    prefix_qtiles: torch.Tensor
    suffix_qtiles: torch.Tensor
    prefix_kvtiles: torch.Tensor
    suffix_kvtiles: torch.Tensor
    rep: int
    max_prefix: int
    tiles: Tiles
    prefix_block_m: int
    suffix_block_m: int


def plan_segments(pseg: list, sseg: list, rep: int, device: torch.device, dtype: torch.dtype, *,
                  decode: bool) -> Plan:
    """Tables from explicit segments (q_start, q_len, kv_start, kv_len, off), one transfer to ``device`` (from pinned
    memory, non-blocking: a plan built inside a layer loop does not synchronise the host with the GPU).

    kv_start may point anywhere in the K/V rows given to the kernels, so segments can read KV in place (lanes).
    ``decode``: one query per suffix segment (its Hq/Hkv rows fill a smaller M tile).
    """
    tiles = tiles_for(dtype)
    # a group with few (query, head) rows gets a smaller M tile (at least 16, the smallest tl.dot)
    most_rows = max((s[1] * rep for s in pseg), default=1)
    prefix_block_m = min(tiles.prefix_m, max(16, triton.next_power_of_2(most_rows)))
    suffix_block_m = tiles.decode_m if decode else tiles.prefix_m
    tables = [
        pseg, sseg,
        _tiles([s[1] * rep for s in pseg], prefix_block_m),
        _tiles([s[1] * rep for s in sseg], suffix_block_m),
        _tiles([s[3] if s[1] else 0 for s in pseg], tiles.bwd_n),
        _tiles([s[3] if s[1] else 0 for s in sseg], tiles.bwd_n),
    ]
    widths = (5, 5, 2, 2, 2, 2)
    flat = [x for table in tables for row in table for x in row]
    pinned = device.type == "cuda"
    packed = torch.tensor(flat, dtype=torch.int32, pin_memory=pinned).to(device, non_blocking=pinned)
    views, start = [], 0
    for table, w in zip(tables, widths):
        views.append(packed[start:start + len(table) * w].view(len(table), w))
        start += len(table) * w
    max_prefix = max((s[3] for s in pseg), default=0)
    return Plan(*views, rep=rep, max_prefix=max_prefix, tiles=tiles, prefix_block_m=prefix_block_m,
                suffix_block_m=suffix_block_m)


def segment_forward(q, k, v, seg, tiles, rep: int, scale: float, splits: int, kv_per_split: int, blocks: dict):
    """Partial states of every segment: (o [splits, total_q, Hq, D] fp32, lse [splits, total_q, Hq] fp32)."""
    total_q, hq, d = q.shape
    o = torch.empty(splits, total_q, hq, d, dtype=torch.float32, device=q.device)
    lse = torch.empty(splits, total_q, hq, dtype=torch.float32, device=q.device)
    if tiles.shape[0]:
        _segment_fwd_kernel[(tiles.shape[0], k.shape[1], splits)](
            q, q.stride(0), q.stride(1), q.stride(2), k, k.stride(0), k.stride(1), k.stride(2),
            v, v.stride(0), v.stride(1), v.stride(2), o, o.stride(0), o.stride(1), o.stride(2),
            lse, lse.stride(0), lse.stride(1), seg, tiles, rep, kv_per_split, scale * LOG2E, d,
            **blocks, BLOCK_D=triton.next_power_of_2(d), **precision(q.dtype), **launch_options(LAUNCH_OPTIONS))
    return o, lse


def shared_prefix_forward(q, prefix_k, prefix_v, suffix_k, suffix_v, plan: Plan, scale: float,
                          num_splits: int | None = None):
    """(out [total_q, Hq, D] in q's dtype, lse [total_q, Hq] fp32): prefix splits + suffix, merged by lse."""
    programs = plan.prefix_qtiles.shape[0] * prefix_k.shape[1]
    splits = num_splits or grid_splits(programs, triton.cdiv(max(plan.max_prefix, 1), MIN_KEYS_PER_SPLIT), q.device)
    block_n = plan.tiles.n
    per_split = triton.cdiv(triton.cdiv(max(plan.max_prefix, 1), splits), block_n) * block_n
    splits = max(1, triton.cdiv(plan.max_prefix, per_split))
    o_p, lse_p = segment_forward(q, prefix_k, prefix_v, plan.prefix_seg, plan.prefix_qtiles, plan.rep, scale,
                                 splits, per_split, dict(BLOCK_M=plan.prefix_block_m, BLOCK_N=block_n))
    o_s, lse_s = segment_forward(q, suffix_k, suffix_v, plan.suffix_seg, plan.suffix_qtiles, plan.rep, scale,
                                 1, max(suffix_k.shape[0], 1), dict(BLOCK_M=plan.suffix_block_m, BLOCK_N=block_n))
    return merge_states(o_p, lse_p, o_s[0], lse_s[0], q.dtype)


class TritonSharedPrefixAttention(torch.autograd.Function):
    """(out, lse) of shared-prefix attention; the backward runs the Triton backward kernels."""

    @staticmethod
    def forward(ctx, q, prefix_k, prefix_v, suffix_k, suffix_v, plan, scale):
        out, lse = shared_prefix_forward(q, prefix_k, prefix_v, suffix_k, suffix_v, plan, scale)
        ctx.save_for_backward(q, prefix_k, prefix_v, suffix_k, suffix_v, out, lse)
        ctx.plan, ctx.scale = plan, scale
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        if grad_out is None and grad_lse is None:
            return (None,) * 7
        grads = shared_prefix_backward(*ctx.saved_tensors, grad_out, grad_lse, ctx.plan, ctx.scale,
                                       ctx.needs_input_grad[:5])
        return (*grads, None, None)


def _fwd_signature(dt: str) -> dict:
    i32, ptr = "i32", f"*{dt}"
    return dict(q_ptr=ptr, stride_qn=i32, stride_qh=i32, stride_qd=i32, k_ptr=ptr, stride_kn=i32, stride_kh=i32,
                stride_kd=i32, v_ptr=ptr, stride_vn=i32, stride_vh=i32, stride_vd=i32, o_ptr="*fp32",
                stride_os=i32, stride_on=i32, stride_oh=i32, lse_ptr="*fp32", stride_ls=i32, stride_ln=i32,
                seg_ptr="*i32", tile_ptr="*i32", REP=i32, KV_PER_SPLIT=i32, qk_scale="fp32", D=i32)


def compile_specs() -> list[tuple[object, dict, dict]]:
    """(kernel, signature, constexprs) triples: ``SPEC_HEAD_DIMS`` x prefix/decode-suffix tiles."""
    specs = []
    for dt, dims in SPEC_HEAD_DIMS.items():
        prec, tiles = spec_settings(dt)
        for d in dims:
            for block_m in (tiles.prefix_m, tiles.decode_m):
                specs.append((_segment_fwd_kernel, _fwd_signature(dt),
                              dict(BLOCK_M=block_m, BLOCK_N=tiles.n, BLOCK_D=d, **prec)))
    return specs

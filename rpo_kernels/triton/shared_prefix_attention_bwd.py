"""Triton backward of ``shared_prefix_attention``: gradients into q, the shared prefix K/V and every suffix K/V.

With the FINAL log-sum-exp of each query row (over prefix and suffix together) the softmax splits exactly over the
two segments a row belongs to, so each segment is differentiated on its own (flash-attention 2 style)::

    p_j  = exp(s_j - lse),   s_j = scale * q . k_j          (0 for keys the row does not see)
    dv_j += p_j dO,          dp_j = dO . v_j,    ds_j = p_j (dp_j - delta),   delta = rowsum(dO * O) - dlse
    dq  += scale * ds_j k_j,  dk_j += scale * ds_j q

``dlse`` (the gradient of the returned lse, when used) enters through delta since d lse / d s_j = p_j.
Two kernels, run once over the prefix segments and once over the suffix segments:
- ``_segment_dq_kernel``: one program per (M tile of (query, head) rows, KV head) adds its rows' dq (fp32 buffer);
- ``_segment_dkdv_kernel``: one program per (block of KV rows, KV head) owns those rows' dk/dv and loops over all the
  query rows of the segment (for a prefix block: every query of the group, the G sequences summed in registers).
No atomics: every output row has one owner per launch. Layout: kernels, launcher.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import LOG2E, launch_options, precision, strides
from .segments import LAUNCH_OPTIONS, SPEC_HEAD_DIMS, _segment_fields, _segment_rows, spec_settings


@triton.jit
def _query_rows(q_ptr, stride_qn, stride_qh, stride_qd, do_ptr, stride_don, stride_doh, stride_dod, lse_ptr,
                delta_ptr, qrow, head, row_ok, ds, D, HQ, UPCAST: tl.constexpr):
    """q and dO rows [BLOCK_M, BLOCK_D] (fp32 when ``UPCAST``), their log2-scaled lse and delta = rowsum(dO * O)."""
    qd_mask = row_ok[:, None] & (ds < D)[None, :]
    q = tl.load(q_ptr + qrow[:, None] * stride_qn + head[:, None] * stride_qh + ds[None, :] * stride_qd,
                mask=qd_mask, other=0.0)
    do = tl.load(do_ptr + qrow[:, None] * stride_don + head[:, None] * stride_doh + ds[None, :] * stride_dod,
                 mask=qd_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    stat = qrow * HQ + head
    lse2 = tl.load(lse_ptr + stat, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(delta_ptr + stat, mask=row_ok, other=0.0)
    return q, do, lse2, delta


@triton.jit
def _segment_dq_kernel(q_ptr, stride_qn, stride_qh, stride_qd, k_ptr, stride_kn, stride_kh, stride_kd,
                       v_ptr, stride_vn, stride_vh, stride_vd, do_ptr, stride_don, stride_doh, stride_dod,
                       lse_ptr, delta_ptr, dq_ptr, seg_ptr, tile_ptr, REP, HQ, qk_scale, sm_scale, D,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dq[row, head, :] += scale * sum_j ds_j k_j over the keys of one segment.

    lse and delta [total_q, HQ] fp32 and dq [total_q, HQ, D] fp32 are contiguous.
    """
    tile = tl.program_id(0)
    kvh = tl.program_id(1)
    m0, q_start, q_len, kv_start, kv_len, off, row_ok, qrow, head, t, kv_hi = _segment_rows(
        seg_ptr, tile_ptr, tile, kvh, REP, BLOCK_M)
    ds = tl.arange(0, BLOCK_D)
    q, do, lse2, delta = _query_rows(q_ptr, stride_qn, stride_qh, stride_qd, do_ptr, stride_don, stride_doh,
                                     stride_dod, lse_ptr, delta_ptr, qrow, head, row_ok, ds, D, HQ, UPCAST)
    limit = t + off
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, kv_hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < kv_hi
        kv_row = (kv_start + cols).to(tl.int64)
        kd_mask = (ds < D)[:, None] & col_ok[None, :]
        kt = tl.load(k_ptr + kv_row[None, :] * stride_kn + kvh * stride_kh + ds[:, None] * stride_kd,
                     mask=kd_mask, other=0.0)
        vt = tl.load(v_ptr + kv_row[None, :] * stride_vn + kvh * stride_vh + ds[:, None] * stride_vd,
                     mask=kd_mask, other=0.0)
        if UPCAST:
            kt = kt.to(tl.float32)
            vt = vt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
        seen = row_ok[:, None] & col_ok[None, :] & (cols[None, :] <= limit[:, None])
        p = tl.where(seen, tl.exp2(s - lse2[:, None]), 0.0)
        dp = tl.dot(do, vt, input_precision=DOT_PRECISION)
        dsc = p * (dp - delta[:, None])
        dq = tl.dot(dsc.to(kt.dtype), tl.trans(kt), dq, input_precision=DOT_PRECISION)
    dq_ptrs = dq_ptr + (qrow * HQ + head)[:, None] * D + ds[None, :]
    qd_mask = row_ok[:, None] & (ds < D)[None, :]
    tl.store(dq_ptrs, tl.load(dq_ptrs, mask=qd_mask, other=0.0) + dq * sm_scale, mask=qd_mask)


@triton.jit
def _segment_dkdv_kernel(q_ptr, stride_qn, stride_qh, stride_qd, k_ptr, stride_kn, stride_kh, stride_kd,
                         v_ptr, stride_vn, stride_vh, stride_vd, do_ptr, stride_don, stride_doh, stride_dod,
                         lse_ptr, delta_ptr, dk_ptr, stride_dkn, stride_dkh, stride_dkd,
                         dv_ptr, stride_dvn, stride_dvh, stride_dvd, seg_ptr, tile_ptr, REP, HQ, qk_scale, sm_scale,
                         D, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                         UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dk/dv of BLOCK_N KV rows of one segment and KV head, summed over every query row that sees them."""
    tile = tl.program_id(0)
    kvh = tl.program_id(1)
    n0, q_start, q_len, kv_start, kv_len, off = _segment_fields(seg_ptr, tile_ptr, tile)
    cols = n0 + tl.arange(0, BLOCK_N)
    col_ok = cols < kv_len
    kv_row = (kv_start + cols).to(tl.int64)
    ds = tl.arange(0, BLOCK_D)
    kd_mask = col_ok[:, None] & (ds < D)[None, :]
    k = tl.load(k_ptr + kv_row[:, None] * stride_kn + kvh * stride_kh + ds[None, :] * stride_kd, mask=kd_mask,
                other=0.0)
    v = tl.load(v_ptr + kv_row[:, None] * stride_vn + kvh * stride_vh + ds[None, :] * stride_vd, mask=kd_mask,
                other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    # the first query that sees key n0 is t = n0 - off (causal); rows before it contribute nothing
    m_lo = tl.maximum(n0 - off, 0) * REP
    for m0 in range(m_lo, q_len * REP, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < q_len * REP
        t = rows // REP
        head = kvh * REP + rows % REP
        qrow = (q_start + t).to(tl.int64)
        q, do, lse2, delta = _query_rows(q_ptr, stride_qn, stride_qh, stride_qd, do_ptr, stride_don, stride_doh,
                                         stride_dod, lse_ptr, delta_ptr, qrow, head, row_ok, ds, D, HQ, UPCAST)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        seen = row_ok[:, None] & col_ok[None, :] & (cols[None, :] <= (t + off)[:, None])
        p = tl.where(seen, tl.exp2(s - lse2[:, None]), 0.0)
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv, input_precision=DOT_PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        dsc = p * (dp - delta[:, None])
        dk = tl.dot(tl.trans(dsc.to(q.dtype)), q, dk, input_precision=DOT_PRECISION)
    tl.store(dk_ptr + kv_row[:, None] * stride_dkn + kvh * stride_dkh + ds[None, :] * stride_dkd,
             (dk * sm_scale).to(dk_ptr.dtype.element_ty), mask=kd_mask)
    tl.store(dv_ptr + kv_row[:, None] * stride_dvn + kvh * stride_dvh + ds[None, :] * stride_dvd,
             dv.to(dv_ptr.dtype.element_ty), mask=kd_mask)


def segment_backward(q, k, v, do, lse, delta, dq, seg, qtiles, kvtiles, rep: int, scale: float, q_block_m: int,
                     tiles, need_kv: bool):
    """Add this segment set's dq into ``dq`` (fp32; skipped when None) and return (dk, dv) in k's dtype (or
    (None, None) when not ``need_kv``)."""
    hq, d = q.shape[1], q.shape[2]
    hkv = k.shape[1]
    common = dict(BLOCK_D=triton.next_power_of_2(d), **precision(q.dtype), **launch_options(LAUNCH_OPTIONS))
    args = (q, *strides(q), k, *strides(k), v, *strides(v), do, *strides(do), lse, delta)
    if dq is not None and qtiles.shape[0]:
        _segment_dq_kernel[(qtiles.shape[0], hkv)](
            *args, dq, seg, qtiles, rep, hq, scale * LOG2E, scale, d,
            BLOCK_M=q_block_m, BLOCK_N=tiles.bwd_n, **common)
    if not need_kv:
        return None, None
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    if kvtiles.shape[0]:
        _segment_dkdv_kernel[(kvtiles.shape[0], hkv)](
            *args, dk, *strides(dk), dv, *strides(dv), seg, kvtiles, rep, hq, scale * LOG2E, scale, d,
            BLOCK_M=tiles.bwd_m, BLOCK_N=tiles.bwd_n, **common)
    return dk, dv


def shared_prefix_backward(q, prefix_k, prefix_v, suffix_k, suffix_v, out, lse, grad_out, grad_lse, plan, scale,
                           needs):
    """(dq, d prefix_k, d prefix_v, d suffix_k, d suffix_v), None where ``needs`` says no gradient is wanted."""
    do = torch.zeros_like(out) if grad_out is None else grad_out
    delta = (do.float() * out.float()).sum(-1)
    if grad_lse is not None:
        delta = delta - grad_lse.float()
    delta = delta.contiguous()
    lse = lse.contiguous()
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device) if needs[0] else None
    dpk, dpv = segment_backward(q, prefix_k, prefix_v, do, lse, delta, dq, plan.prefix_seg, plan.prefix_qtiles,
                                plan.prefix_kvtiles, plan.rep, scale, plan.prefix_block_m, plan.tiles,
                                needs[1] or needs[2])
    dsk, dsv = segment_backward(q, suffix_k, suffix_v, do, lse, delta, dq, plan.suffix_seg, plan.suffix_qtiles,
                                plan.suffix_kvtiles, plan.rep, scale, plan.suffix_block_m, plan.tiles,
                                needs[3] or needs[4])
    return (dq.to(q.dtype) if needs[0] else None, dpk if needs[1] else None, dpv if needs[2] else None,
            dsk if needs[3] else None, dsv if needs[4] else None)


def _bwd_signature(dt: str, dkdv: bool) -> dict:
    i32, ptr = "i32", f"*{dt}"
    sig = dict(q_ptr=ptr, stride_qn=i32, stride_qh=i32, stride_qd=i32, k_ptr=ptr, stride_kn=i32, stride_kh=i32,
               stride_kd=i32, v_ptr=ptr, stride_vn=i32, stride_vh=i32, stride_vd=i32, do_ptr=ptr, stride_don=i32,
               stride_doh=i32, stride_dod=i32, lse_ptr="*fp32", delta_ptr="*fp32")
    if dkdv:
        sig.update(dk_ptr=ptr, stride_dkn=i32, stride_dkh=i32, stride_dkd=i32,
                   dv_ptr=ptr, stride_dvn=i32, stride_dvh=i32, stride_dvd=i32)
    else:
        sig.update(dq_ptr="*fp32")
    sig.update(seg_ptr="*i32", tile_ptr="*i32", REP=i32, HQ=i32, qk_scale="fp32", sm_scale="fp32", D=i32)
    return sig


def compile_specs() -> list[tuple[object, dict, dict]]:
    """(kernel, signature, constexprs) triples for the dtypes and head dims of ``SPEC_HEAD_DIMS``."""
    specs = []
    for dt, dims in SPEC_HEAD_DIMS.items():
        prec, tiles = spec_settings(dt)
        for d in dims:
            specs.append((_segment_dq_kernel, _bwd_signature(dt, False),
                          dict(BLOCK_M=tiles.prefix_m, BLOCK_N=tiles.bwd_n, BLOCK_D=d, **prec)))
            specs.append((_segment_dkdv_kernel, _bwd_signature(dt, True),
                          dict(BLOCK_M=tiles.bwd_m, BLOCK_N=tiles.bwd_n, BLOCK_D=d, **prec)))
    return specs

"""Triton kernels for ``token_logprobs``: lm_head matmul fused with an online log-sum-exp over vocab tiles.

Semantics and gradient formulas: ``rpo_kernels.reference.token_logprobs``. Layout of this file: kernels, launchers,
autograd.Function. Every kernel keeps fp32 accumulators and upcasts bf16/fp16 tiles right after loading when
``UPCAST`` is set (the CPU interpreter computes bf16 wrongly); on a GPU, 16-bit tiles go to the tensor cores as they
are and fp32 tiles use IEEE fp32 (no TF32), so fp32 results match an fp32 torch run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference.token_logprobs import chunk_rows
from .common import grid_splits, launch_options, precision, spec_precision


@triton.jit
def _logits_tile(h_ptr, stride_hn, stride_hh, w_ptr, stride_wv, stride_wh, rows, row_mask, cols, col_mask, H,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                 UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """acc[BLOCK_N, BLOCK_V] = hidden[rows] @ weight[cols]^T in fp32."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        k_mask = ks < H
        h = tl.load(h_ptr + rows[:, None] * stride_hn + ks[None, :] * stride_hh,
                    mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptr + cols[:, None] * stride_wv + ks[None, :] * stride_wh,
                    mask=col_mask[:, None] & k_mask[None, :], other=0.0)
        if UPCAST:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, tl.trans(w), acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _stats_kernel(h_ptr, stride_hn, stride_hh, w_ptr, stride_wv, stride_wh, t_ptr,
                  max_ptr, sum_ptr, zsum_ptr, zt_ptr,
                  N, V, H, V_PER_SPLIT, inv_temp,
                  ENTROPY: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                  UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Per (row block, vocab split): running max m, sum exp(z - m), sum exp(z - m) * z and the target logit.

    Partials go to [num_splits, N] buffers; the launcher merges the splits (log-sum-exp merge).
    """
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    tgt = tl.load(t_ptr + rows, mask=row_mask, other=-1)
    m = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_N,), dtype=tl.float32)
    zs = tl.zeros((BLOCK_N,), dtype=tl.float32)
    zt = tl.zeros((BLOCK_N,), dtype=tl.float32)
    v_start = pid_s * V_PER_SPLIT
    v_end = tl.minimum(v_start + V_PER_SPLIT, V)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < v_end
        z = _logits_tile(h_ptr, stride_hn, stride_hh, w_ptr, stride_wv, stride_wh, rows, row_mask, cols, col_mask,
                         H, BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, DOT_PRECISION) * inv_temp
        z_valid = tl.where(col_mask[None, :], z, 0.0)
        z = tl.where(col_mask[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(z - m_new[:, None])
        s = s * alpha + tl.sum(p, axis=1)
        if ENTROPY:
            zs = zs * alpha + tl.sum(p * z_valid, axis=1)
        m = m_new
        zt += tl.sum(tl.where(cols[None, :] == tgt[:, None], z_valid, 0.0), axis=1)
    out = pid_s * N + rows
    tl.store(max_ptr + out, m, mask=row_mask)
    tl.store(sum_ptr + out, s, mask=row_mask)
    tl.store(zt_ptr + out, zt, mask=row_mask)
    if ENTROPY:
        tl.store(zsum_ptr + out, zs, mask=row_mask)


@triton.jit
def _dlogits_kernel(h_ptr, stride_hn, stride_hh, w_ptr, stride_wv, stride_wh, t_ptr, lse_ptr, ent_ptr,
                    glp_ptr, gent_ptr, dz_ptr, stride_dn, stride_dv,
                    N, V, H, inv_temp,
                    HAS_GLP: tl.constexpr, HAS_GENT: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dz[n, v] = (g_n * (1[v = y_n] - p_nv) - e_n * p_nv * (log p_nv + H_n)) / tau for one [rows, cols] tile."""
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    col_mask = cols < V
    z = _logits_tile(h_ptr, stride_hn, stride_hh, w_ptr, stride_wv, stride_wh, rows, row_mask, cols, col_mask,
                     H, BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, DOT_PRECISION) * inv_temp
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    logp = z - lse[:, None]
    p = tl.exp(logp)
    grad = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    if HAS_GLP:
        g = tl.load(glp_ptr + rows, mask=row_mask, other=0.0)
        tgt = tl.load(t_ptr + rows, mask=row_mask, other=-1)
        grad = g[:, None] * (tl.where(cols[None, :] == tgt[:, None], 1.0, 0.0) - p)
    if HAS_GENT:
        e = tl.load(gent_ptr + rows, mask=row_mask, other=0.0)
        ent = tl.load(ent_ptr + rows, mask=row_mask, other=0.0)
        grad -= e[:, None] * p * (logp + ent[:, None])
    grad = grad * inv_temp
    tl.store(dz_ptr + rows[:, None] * stride_dn + cols[None, :] * stride_dv,
             grad.to(dz_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def _dweight_kernel(dz_ptr, stride_dn, stride_dv, h_ptr, stride_hn, stride_hh, dw_ptr, stride_wv, stride_wh,
                    N, V, H,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dw[cols, ks] (fp32, in place) += dz[:, cols]^T @ hidden[:, ks], rows visited in order BLOCK_N at a time.

    Rows are added block by block in a fixed order onto the fp32 accumulator in memory, so the result does not
    depend on how the caller splits the rows into chunks (chunks being multiples of BLOCK_N).
    """
    pid_v = tl.program_id(0)
    pid_h = tl.program_id(1)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    col_mask = cols < V
    ks = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    k_mask = ks < H
    w_offs = cols[:, None] * stride_wv + ks[None, :] * stride_wh
    w_mask = col_mask[:, None] & k_mask[None, :]
    acc = tl.load(dw_ptr + w_offs, mask=w_mask, other=0.0)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        dz = tl.load(dz_ptr + rows[:, None] * stride_dn + cols[None, :] * stride_dv,
                     mask=row_mask[:, None] & col_mask[None, :], other=0.0)
        h = tl.load(h_ptr + rows[:, None] * stride_hn + ks[None, :] * stride_hh,
                    mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        if UPCAST:
            dz = dz.to(tl.float32)
            h = h.to(tl.float32)
        acc = tl.dot(tl.trans(dz), h, acc, input_precision=DOT_PRECISION)
    tl.store(dw_ptr + w_offs, acc, mask=w_mask)


# Tile sizes. DW_BLOCK_N also fixes the reduction order of dW; backward chunks are multiples of it.
STATS_BLOCKS = dict(BLOCK_N=64, BLOCK_V=128, BLOCK_H=64)
DLOGITS_BLOCKS = dict(BLOCK_N=64, BLOCK_V=128, BLOCK_H=64)
DW_BLOCKS = dict(BLOCK_N=64, BLOCK_V=128, BLOCK_H=64)
# A [chunk, V] gradient block of at most this many elements exists at a time in the backward.
BACKWARD_CHUNK_ELEMENTS = 1 << 27


# Launch options on a GPU; the ahead-of-time lowering check compiles with the same ones.
LAUNCH_OPTIONS = dict(num_warps=8, num_stages=3)


def logprob_stats(hidden, weight, targets, temperature: float, want_entropy: bool, num_splits: int | None = None):
    """(logp [N], entropy [N] or None, lse [N]) fp32, from hidden [N, H], weight [V, H], targets [N] int64."""
    n, h = hidden.shape
    v = weight.shape[0]
    blocks = STATS_BLOCKS
    row_blocks = triton.cdiv(n, blocks["BLOCK_N"])
    splits = num_splits or grid_splits(row_blocks, triton.cdiv(v, blocks["BLOCK_V"]), hidden.device)
    per_split = triton.cdiv(triton.cdiv(v, splits), blocks["BLOCK_V"]) * blocks["BLOCK_V"]
    splits = triton.cdiv(v, per_split)
    f32 = dict(dtype=torch.float32, device=hidden.device)
    mx, sm, zt = (torch.empty(splits, n, **f32) for _ in range(3))
    zs = torch.empty(splits, n, **f32) if want_entropy else zt
    if n:
        _stats_kernel[(row_blocks, splits)](
            hidden, hidden.stride(0), hidden.stride(1), weight, weight.stride(0), weight.stride(1), targets,
            mx, sm, zs, zt, n, v, h, per_split, 1.0 / temperature, ENTROPY=want_entropy,
            **blocks, **precision(hidden.dtype), **launch_options(LAUNCH_OPTIONS))
    top = mx.max(0).values
    scale = torch.exp(mx - top)
    total = (sm * scale).sum(0)
    lse = top + torch.log(total)
    logp = zt.sum(0) - lse
    entropy = lse - (zs * scale).sum(0) / total if want_entropy else None
    return logp, entropy, lse


def dlogits_chunk(hidden, weight, targets, lse, entropy, grad_logp, grad_entropy, temperature: float, out):
    """Write dL/d(raw logits) of rows ``hidden`` [C, H] into ``out`` [C, V] (hidden's dtype)."""
    c, h = hidden.shape
    v = weight.shape[0]
    b = DLOGITS_BLOCKS
    dummy = lse
    _dlogits_kernel[(triton.cdiv(c, b["BLOCK_N"]), triton.cdiv(v, b["BLOCK_V"]))](
        hidden, hidden.stride(0), hidden.stride(1), weight, weight.stride(0), weight.stride(1), targets, lse,
        dummy if entropy is None else entropy, dummy if grad_logp is None else grad_logp,
        dummy if grad_entropy is None else grad_entropy, out, out.stride(0), out.stride(1),
        c, v, h, 1.0 / temperature, HAS_GLP=grad_logp is not None, HAS_GENT=grad_entropy is not None,
        **b, **precision(hidden.dtype), **launch_options(LAUNCH_OPTIONS))
    return out


def accumulate_dweight(dz, hidden, dweight):
    """dweight [V, H] fp32 += dz [C, V]^T @ hidden [C, H], in a fixed row order."""
    c, h = hidden.shape
    v = dz.shape[1]
    b = DW_BLOCKS
    _dweight_kernel[(triton.cdiv(v, b["BLOCK_V"]), triton.cdiv(h, b["BLOCK_H"]))](
        dz, dz.stride(0), dz.stride(1), hidden, hidden.stride(0), hidden.stride(1),
        dweight, dweight.stride(0), dweight.stride(1), c, v, h,
        **b, **precision(hidden.dtype), **launch_options(LAUNCH_OPTIONS))
    return dweight


class TritonTokenLogprobs(torch.autograd.Function):
    """logp (and entropy) of targets under hidden @ weight^T / temperature; backward recomputes per chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, want_entropy, chunk_size):
        logp, entropy, lse = logprob_stats(hidden, weight, targets, temperature, want_entropy)
        if entropy is None:
            entropy = torch.zeros_like(logp)
            ctx.mark_non_differentiable(entropy)
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_logp is None and grad_entropy is None:
            return None, None, None, None, None, None
        n, v = hidden.shape[0], weight.shape[0]
        rows = ctx.chunk_size or chunk_rows(n, v, DW_BLOCKS["BLOCK_N"], BACKWARD_CHUNK_ELEMENTS)
        if rows % DW_BLOCKS["BLOCK_N"] and rows < n:
            raise ValueError(f"chunk_size must be a multiple of {DW_BLOCKS['BLOCK_N']} rows, got {rows}")
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        glp = None if grad_logp is None else grad_logp.float().contiguous()
        gent = None if grad_entropy is None else grad_entropy.float().contiguous()
        dz = torch.empty(min(rows, n), v, dtype=hidden.dtype, device=hidden.device)
        for s in range(0, n, rows):
            sl = slice(s, s + rows)
            h = hidden[sl]
            g = dlogits_chunk(h, weight, targets[sl], lse[sl], entropy[sl],
                              None if glp is None else glp[sl], None if gent is None else gent[sl],
                              ctx.temperature, dz[: h.shape[0]])
            if need_h:
                grad_h[sl] = g @ weight
            if need_w:
                accumulate_dweight(g, h, grad_w)
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None


def compile_specs() -> list[tuple[object, dict, dict]]:
    """(kernel, signature, constexprs) triples covering every kernel of this file, for ahead-of-time lowering."""
    specs = []
    for dt in ("bf16", "fp16", "fp32"):
        prec = spec_precision(dt)
        ptr, i32, f32 = f"*{dt}", "i32", "fp32"
        specs.append((_stats_kernel,
                      dict(h_ptr=ptr, stride_hn=i32, stride_hh=i32, w_ptr=ptr, stride_wv=i32, stride_wh=i32,
                           t_ptr="*i64", max_ptr="*fp32", sum_ptr="*fp32", zsum_ptr="*fp32", zt_ptr="*fp32",
                           N=i32, V=i32, H=i32, V_PER_SPLIT=i32, inv_temp=f32),
                      dict(ENTROPY=True, **STATS_BLOCKS, **prec)))
        specs.append((_dlogits_kernel,
                      dict(h_ptr=ptr, stride_hn=i32, stride_hh=i32, w_ptr=ptr, stride_wv=i32, stride_wh=i32,
                           t_ptr="*i64", lse_ptr="*fp32", ent_ptr="*fp32", glp_ptr="*fp32", gent_ptr="*fp32",
                           dz_ptr=ptr, stride_dn=i32, stride_dv=i32, N=i32, V=i32, H=i32, inv_temp=f32),
                      dict(HAS_GLP=True, HAS_GENT=True, **DLOGITS_BLOCKS, **prec)))
        specs.append((_dweight_kernel,
                      dict(dz_ptr=ptr, stride_dn=i32, stride_dv=i32, h_ptr=ptr, stride_hn=i32, stride_hh=i32,
                           dw_ptr="*fp32", stride_wv=i32, stride_wh=i32, N=i32, V=i32, H=i32),
                      dict(**DW_BLOCKS, **prec)))
    return specs

"""Triton kernel of the exact log-sum-exp merge of partial attentions (``shared_prefix_attention``'s last step).

Semantics: ``rpo_kernels.reference.merge_attention_states``. One kernel merges K_A stacked partial states of A (the
split-KV partials of the prefix part, or a single state) with one state B, for every (row, head) pair::

    lse = log(sum_k exp(lse_k)),   out = sum_k exp(lse_k - lse) * out_k      (lse = -inf, out = 0 when all empty)

Layout of this file: kernel, launcher (forward only: the attention's backward kernels take the merged lse).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import launch_options


@triton.jit
def _merge_kernel(a_ptr, stride_ak, stride_an, stride_ah, stride_ad, la_ptr, stride_lak, stride_lan, stride_lah,
                  b_ptr, stride_bn, stride_bh, stride_bd, lb_ptr, stride_lbn, stride_lbh,
                  o_ptr, stride_on, stride_oh, stride_od, lo_ptr, stride_lon, stride_loh,
                  R, H, D, K_A,
                  BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """out/lse of R = N*H (row, head) pairs from K_A states A[k] and one state B; D walked BLOCK_D at a time."""
    pid = tl.program_id(0)
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < R
    n = (r // H).to(tl.int64)
    h = r % H
    top = tl.load(lb_ptr + n * stride_lbn + h * stride_lbh, mask=r_ok, other=float("-inf")).to(tl.float32)
    for k in range(0, K_A):
        la = tl.load(la_ptr + k * stride_lak + n * stride_lan + h * stride_lah, mask=r_ok, other=float("-inf"))
        top = tl.maximum(top, la.to(tl.float32))
    top = tl.where(top == float("-inf"), 0.0, top)
    w_b = tl.exp(tl.load(lb_ptr + n * stride_lbn + h * stride_lbh, mask=r_ok, other=float("-inf")) - top)
    total = w_b
    for k in range(0, K_A):
        la = tl.load(la_ptr + k * stride_lak + n * stride_lan + h * stride_lah, mask=r_ok, other=float("-inf"))
        total += tl.exp(la.to(tl.float32) - top)
    nonzero = total > 0
    safe = tl.where(nonzero, total, 1.0)
    tl.store(lo_ptr + n * stride_lon + h * stride_loh, tl.where(nonzero, top + tl.log(safe), float("-inf")),
             mask=r_ok)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        m = r_ok[:, None] & (ds < D)[None, :]
        b = tl.load(b_ptr + n[:, None] * stride_bn + h[:, None] * stride_bh + ds[None, :] * stride_bd, mask=m,
                    other=0.0)
        acc = (w_b / safe)[:, None] * b.to(tl.float32)
        for k in range(0, K_A):
            la = tl.load(la_ptr + k * stride_lak + n * stride_lan + h * stride_lah, mask=r_ok, other=float("-inf"))
            a = tl.load(a_ptr + k * stride_ak + n[:, None] * stride_an + h[:, None] * stride_ah
                        + ds[None, :] * stride_ad, mask=m, other=0.0)
            acc += (tl.exp(la.to(tl.float32) - top) / safe)[:, None] * a.to(tl.float32)
        tl.store(o_ptr + n[:, None] * stride_on + h[:, None] * stride_oh + ds[None, :] * stride_od,
                 acc.to(o_ptr.dtype.element_ty), mask=m)


MERGE_BLOCKS = dict(BLOCK_R=32, BLOCK_D=64)
# Launch options on a GPU; the ahead-of-time lowering check compiles with the same ones.
LAUNCH_OPTIONS = dict(num_warps=4, num_stages=2)


def merge_states(a, lse_a, b, lse_b, out_dtype: torch.dtype):
    """Merge stacked states a [K, N, H, D] / lse_a [K, N, H] with b [N, H, D] / lse_b [N, H].

    Returns (out [N, H, D] in ``out_dtype``, lse [N, H] fp32).
    """
    k, n, h, d = a.shape
    out = torch.empty(n, h, d, dtype=out_dtype, device=b.device)
    lse = torch.empty(n, h, dtype=torch.float32, device=b.device)
    rows = n * h
    if rows:
        blocks = MERGE_BLOCKS
        _merge_kernel[(triton.cdiv(rows, blocks["BLOCK_R"]),)](
            a, a.stride(0), a.stride(1), a.stride(2), a.stride(3), lse_a, lse_a.stride(0), lse_a.stride(1),
            lse_a.stride(2), b, b.stride(0), b.stride(1), b.stride(2), lse_b, lse_b.stride(0), lse_b.stride(1),
            out, out.stride(0), out.stride(1), out.stride(2), lse, lse.stride(0), lse.stride(1),
            rows, h, d, k, **blocks, **launch_options(LAUNCH_OPTIONS))
    return out, lse


def compile_specs() -> list[tuple[object, dict, dict]]:
    """(kernel, signature, constexprs) triples of this file: fp32 partials into each output dtype."""
    specs = []
    for a_dt, o_dt in (("fp32", "bf16"), ("fp32", "fp16"), ("fp32", "fp32")):
        i32 = "i32"
        sig = dict(a_ptr=f"*{a_dt}", stride_ak=i32, stride_an=i32, stride_ah=i32, stride_ad=i32, la_ptr="*fp32",
                   stride_lak=i32, stride_lan=i32, stride_lah=i32, b_ptr=f"*{a_dt}", stride_bn=i32, stride_bh=i32,
                   stride_bd=i32, lb_ptr="*fp32", stride_lbn=i32, stride_lbh=i32, o_ptr=f"*{o_dt}", stride_on=i32,
                   stride_oh=i32, stride_od=i32, lo_ptr="*fp32", stride_lon=i32, stride_loh=i32,
                   R=i32, H=i32, D=i32, K_A=i32)
        specs.append((_merge_kernel, sig, dict(MERGE_BLOCKS)))
    return specs

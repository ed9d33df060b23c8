"""Triton kernel for ``kv_append``: scatter new K/V rows into a slot-addressed KV cache, in place.

Semantics: ``rpo_kernels.reference.kv_append``. One program copies ``BLOCK_T`` rows (tokens), walking the Hkv * D
values of a row ``BLOCK_C`` at a time; any strides (a cache is often one layer's view of a bigger tensor).
Layout: kernel, launcher (no autograd: a cache write is an inference-time op).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import launch_options, strides


@triton.jit
def _kv_append_kernel(kc_ptr, stride_kcn, stride_kch, stride_kcd, vc_ptr, stride_vcn, stride_vch, stride_vcd,
                      k_ptr, stride_kn, stride_kh, stride_kd, v_ptr, stride_vn, stride_vh, stride_vd,
                      slot_ptr, T, H, D, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """k_cache[slots[t], h, d] = k_new[t, h, d] (same for v) for the BLOCK_T rows t of this program."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    slot = tl.load(slot_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    src = rows.to(tl.int64)
    for c0 in range(0, H * D, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        h = c // D
        d = c % D
        m = row_ok[:, None] & (c < H * D)[None, :]
        k = tl.load(k_ptr + src[:, None] * stride_kn + h[None, :] * stride_kh + d[None, :] * stride_kd, mask=m)
        tl.store(kc_ptr + slot[:, None] * stride_kcn + h[None, :] * stride_kch + d[None, :] * stride_kcd, k, mask=m)
        v = tl.load(v_ptr + src[:, None] * stride_vn + h[None, :] * stride_vh + d[None, :] * stride_vd, mask=m)
        tl.store(vc_ptr + slot[:, None] * stride_vcn + h[None, :] * stride_vch + d[None, :] * stride_vcd, v, mask=m)


APPEND_BLOCKS = dict(BLOCK_T=16, BLOCK_C=256)
# Launch options on a GPU; the ahead-of-time lowering check compiles with the same ones.
LAUNCH_OPTIONS = dict(num_warps=4, num_stages=1)


def kv_append(k_cache, v_cache, k_new, v_new, slots) -> None:
    """In place: rows of k_new/v_new [T, Hkv, D] into k_cache/v_cache [num_slots, Hkv, D] at slots [T] int64."""
    t, h, d = k_new.shape
    if t == 0:
        return
    _kv_append_kernel[(triton.cdiv(t, APPEND_BLOCKS["BLOCK_T"]),)](
        k_cache, *strides(k_cache), v_cache, *strides(v_cache), k_new, *strides(k_new), v_new, *strides(v_new),
        slots, t, h, d,
        **APPEND_BLOCKS, **launch_options(LAUNCH_OPTIONS))


def compile_specs() -> list[tuple[object, dict, dict]]:
    """(kernel, signature, constexprs) triples: one per storage dtype."""
    specs = []
    for dt in ("bf16", "fp16", "fp32"):
        ptr, i32 = f"*{dt}", "i32"
        sig = {}
        for p in ("kc", "vc", "k", "v"):
            sig.update({f"{p}_ptr": ptr, f"stride_{p}n": i32, f"stride_{p}h": i32, f"stride_{p}d": i32})
        sig.update(slot_ptr="*i64", T=i32, H=i32, D=i32)
        specs.append((_kv_append_kernel, sig, dict(APPEND_BLOCKS)))
    return specs

"""Python layer of the CUDA ops: lazy loading, wrappers with the public signatures, fake (meta) partners.

Ops (schemas in ``csrc/ops/bindings.cpp``)::

    rpo_kernels::merge_attention_states(Tensor out_a, Tensor lse_a, Tensor out_b, Tensor lse_b) -> (Tensor, Tensor)
    rpo_kernels::shared_prefix_decode(Tensor q, Tensor prefix_k, Tensor prefix_v, Tensor prefix_indptr,
        Tensor suffix_k, Tensor suffix_v, Tensor suffix_indptr, Tensor group_indptr, float softmax_scale)
        -> (Tensor, Tensor)
    rpo_kernels::kv_append(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k_new, Tensor v_new, Tensor slots) -> ()

The wrappers make inputs acceptable to the launchers (contiguous rows where needed, fp32 LSEs) and leave value
checks of index tensors to the public functions (they need a device sync); the launchers check shapes, dtypes,
devices and strides and name the argument in their errors.
"""

from __future__ import annotations

import importlib

import torch

DECODE_DTYPES = (torch.float16, torch.bfloat16)
DECODE_HEAD_DIMS = (64, 128)

_loaded = False
_fakes_registered = False


def load() -> None:
    """Import ``rpo_kernels._C`` and register the fake partners; ImportError when the extension is not built."""
    global _loaded
    if _loaded:
        return
    importlib.import_module("rpo_kernels._C")
    register_fakes()
    _loaded = True


def available() -> tuple[bool, str]:
    """Whether the extension loads here and, either way, why."""
    try:
        load()
    except ImportError as exc:
        return False, f"the CUDA extension rpo_kernels._C is not built ({exc})"
    return True, "rpo_kernels._C loaded"


def register_fakes() -> None:
    """Register the fake partners of the ``rpo_kernels::`` ops, and the backward of merge_attention_states (once;
    the ops must already be defined). shared_prefix_decode and kv_append are inference-only (no backward)."""
    global _fakes_registered
    if _fakes_registered:
        return
    torch.library.register_fake("rpo_kernels::merge_attention_states")(_merge_attention_states_fake)
    torch.library.register_fake("rpo_kernels::shared_prefix_decode")(_shared_prefix_decode_fake)
    torch.library.register_fake("rpo_kernels::kv_append")(_kv_append_fake)
    torch.library.register_autograd("rpo_kernels::merge_attention_states", _merge_backward,
                                    setup_context=_merge_setup_context)
    _fakes_registered = True


def _merge_attention_states_fake(out_a, lse_a, out_b, lse_b):
    return torch.empty_like(out_a, memory_format=torch.contiguous_format), lse_a.new_empty(out_a.shape[:2])


def _merge_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs, output[1])


def _merge_backward(ctx, grad_out, grad_lse):
    """out = wa out_a + wb out_b, lse = log(e^lse_a + e^lse_b), w = exp(lse_side - lse) (0 for an empty side):
    d out_a = wa g,  d lse_a = wa (sum_d g (out_a - out) + g_lse), and the same for b. Computed in fp32."""
    out_a, lse_a, out_b, lse_b, lse = ctx.saved_tensors
    top = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    wa = torch.where(torch.isinf(lse_a), torch.zeros_like(lse_a), torch.exp(lse_a - top))
    wb = torch.where(torch.isinf(lse_b), torch.zeros_like(lse_b), torch.exp(lse_b - top))
    oa, ob = out_a.float(), out_b.float()
    out = wa[..., None] * oa + wb[..., None] * ob
    g = grad_out.float() if grad_out is not None else torch.zeros_like(out)
    g_lse = grad_lse if grad_lse is not None else torch.zeros_like(lse)
    d_lse_a = wa * ((g * (oa - out)).sum(-1) + g_lse)
    d_lse_b = wb * ((g * (ob - out)).sum(-1) + g_lse)
    return (wa[..., None] * g).to(out_a.dtype), d_lse_a, (wb[..., None] * g).to(out_b.dtype), d_lse_b


def _shared_prefix_decode_fake(q, prefix_k, prefix_v, prefix_indptr, suffix_k, suffix_v, suffix_indptr,
                               group_indptr, softmax_scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:2], dtype=torch.float32)


def _kv_append_fake(k_cache, v_cache, k_new, v_new, slots):
    return None


def _vector_rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dim is contiguous and every row starts on 16 bytes, else a contiguous copy."""
    per16 = 16 // t.element_size()
    ok = t.stride(-1) == 1 and t.storage_offset() % per16 == 0
    ok = ok and all(s % per16 == 0 for s in t.stride()[:-1])
    return t if ok else t.contiguous()


def supports_shared_prefix_attention(q: torch.Tensor, *, q_indptr: torch.Tensor | None = None) -> tuple[bool, str]:
    """Whether the CUDA kernel covers this call (decode form, fp16/bf16, head dim 64 or 128) and, if not, why."""
    if q_indptr is not None:
        return False, "the CUDA kernel is decode-only (one query per sequence); q_indptr must be None"
    if q.dtype not in DECODE_DTYPES:
        return False, f"the CUDA kernel takes float16 or bfloat16, got {q.dtype}"
    if q.shape[-1] not in DECODE_HEAD_DIMS:
        return False, f"the CUDA kernel takes head dim 64 or 128, got {q.shape[-1]}"
    return True, "decode, supported dtype and head dim"


def merge_attention_states(out_a, lse_a, out_b, lse_b):
    """CUDA ``rpo_kernels.merge_attention_states``: (out [N, H, D] in out_a's dtype, lse [N, H] fp32)."""
    load()
    return torch.ops.rpo_kernels.merge_attention_states(out_a.contiguous(), lse_a.float().contiguous(),
                                                        out_b.contiguous(), lse_b.float().contiguous())


def shared_prefix_attention(q, prefix_k, prefix_v, prefix_indptr, suffix_k, suffix_v, suffix_indptr, group_indptr,
                            *, q_indptr=None, softmax_scale=None, return_lse=False):
    """CUDA ``rpo_kernels.shared_prefix_attention``, decode form: out [N, Hq, D] (and lse [N, Hq] fp32).

    Raises NotImplementedError for what the kernel does not cover (see ``supports_shared_prefix_attention``).
    """
    ok, why = supports_shared_prefix_attention(q, q_indptr=q_indptr)
    if not ok:
        raise NotImplementedError(f"shared_prefix_attention (cuda backend): {why}; use backend='triton' or "
                                  "'reference'")
    load()
    scale = float(softmax_scale) if softmax_scale is not None else q.shape[-1] ** -0.5
    out, lse = torch.ops.rpo_kernels.shared_prefix_decode(
        _vector_rows(q), _vector_rows(prefix_k), _vector_rows(prefix_v), prefix_indptr, _vector_rows(suffix_k),
        _vector_rows(suffix_v), suffix_indptr, group_indptr, scale)
    return (out, lse) if return_lse else out


def kv_append(k_cache, v_cache, k_new, v_new, slots) -> None:
    """CUDA ``rpo_kernels.kv_append``, in place: ``k_cache[slots[t]] = k_new[t]``, ``v_cache[slots[t]] = v_new[t]``.

    k_cache/v_cache [num_slots, Hkv, D] (or [..., Hkv, D], contiguous: a paged cache [blocks, block_size, Hkv, D] is
    addressed as ``block * block_size + offset``); k_new/v_new [T, Hkv, D]; slots [T] int32/int64. Slot values are
    validated by the public function; the kernel skips a negative slot (padding) and never writes past the cache.
    """
    load()
    k_new = k_new if k_new.stride(-1) == 1 and k_new.stride(-2) == k_new.shape[-1] else k_new.contiguous()
    v_new = v_new if v_new.stride(-1) == 1 and v_new.stride(-2) == v_new.shape[-1] else v_new.contiguous()
    torch.ops.rpo_kernels.kv_append(k_cache, v_cache, k_new, v_new, slots)

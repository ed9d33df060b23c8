"""The one decoder path: a Llama / Qwen2 / Qwen3 causal LM run on packed token rows, attention supplied per call.

The native rollout engine's prefill and decode go through ``Decoder.hidden`` (``rpo_train.rollout.model``); the
training forwards run the HF model's own forward (the prefix-once one with ``rpo_train.model.shared_attention``). The
checkpoint's own modules do the rest (embedding, RMSNorms, q/k/v/o projections, Qwen3's per-head q/k norms, rotary
embedding, MLP, final norm, lm_head), so parity with the HF forward is a property of one layer function, tested once
per family.

Attention is a callable ``attend(layer_index, q, k, v) -> out``: q [T, Hq, D], k/v [T, Hkv, D] the rows' own
rotated keys/values, out [T, Hq, D]. It decides where K/V live (a KV cache written in place, the packed rows of a
training micro-batch) and how they are read; a plan made once per forward serves every layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attention_dtype(q: torch.Tensor) -> torch.dtype:
    """The dtype attention runs in: autocast's on q's device when it is on (as torch SDPA under autocast, so fp32
    master weights still use the 16-bit kernels), else q's."""
    kind = q.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else q.dtype


class Decoder:
    """Packed-row forward of an HF Llama / Qwen2 / Qwen3 causal LM (``model.model.layers``, ``lm_head``).

    heads = (Hq, Hkv, D) and the softmax ``scale`` are the checkpoint's own (``head_dim``, ``scaling``).
    """

    def __init__(self, hf_model):
        self.hf = hf_model
        core = hf_model.model
        self.embed_tokens, self.layers, self.norm = core.embed_tokens, core.layers, core.norm
        self.rotary_emb, self.lm_head = core.rotary_emb, hf_model.get_output_embeddings()
        config = hf_model.config
        hq = config.num_attention_heads
        hkv = getattr(config, "num_key_value_heads", None) or hq
        d = getattr(config, "head_dim", None) or config.hidden_size // hq
        self.heads = (hq, hkv, d)
        self.scale = float(getattr(self.layers[0].self_attn, "scaling", d ** -0.5))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def layer(self, index: int, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend):
        """One decoder layer on rows h [T, H]: h + o_proj(attention) then h + mlp, pre-norm (RMSNorm) both.

        q = q_proj(x), k = k_proj(x), v = v_proj(x) per head, Qwen3's q_norm/k_norm on them, then the rotary
        embedding ``x * cos + rotate_half(x) * sin`` (cos/sin [T, 1, D] of the rows' positions).
        """
        layer = self.layers[index]
        attn = layer.self_attn
        hq, hkv, d = self.heads
        x = layer.input_layernorm(h)
        t = x.shape[0]
        q = attn.q_proj(x).view(t, hq, d)
        k = attn.k_proj(x).view(t, hkv, d)
        v = attn.v_proj(x).view(t, hkv, d)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        dtype = attention_dtype(q)  # under autocast v comes out 16-bit while the rotary output is fp32
        out = attend(index, q.to(dtype), k.to(dtype), v.to(dtype))
        h = h + attn.o_proj(out.reshape(t, hq * d).to(h.dtype))
        return h + layer.mlp(layer.post_attention_layernorm(h))

    def hidden(self, ids: torch.Tensor, positions: torch.Tensor, attend: Attend) -> torch.Tensor:
        """Hidden states [T, H] (before the final norm) of packed rows ``ids`` [T] at ``positions`` [T] int64."""
        h = self.embed_tokens(ids)
        cos, sin = self.rotary_emb(h, positions[None])
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # [T, 1, D]
        for i in range(self.num_layers):
            h = self.layer(i, h, cos, sin, attend)
        return h

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits [R, V] of hidden rows [R, H]: lm_head(norm(h))."""
        return self.lm_head(self.norm(hidden)).float()

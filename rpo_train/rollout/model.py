"""The native engine's forward: a Llama/Qwen2/Qwen3 decoder run on packed tokens with a paged, shared-prefix KV.

The checkpoint's own modules (embedding, RMSNorms, projections, rotary embedding, MLP, lm_head) are reused from the
transformers model; attention is ours: K/V rows go into an ``rpo_kernels.PrefixKVStore`` through
``rpo_kernels.kv_append`` and every attention is ``rpo_kernels.shared_prefix_attention``:
- prefill: packed prompts (+ cached prefixes), each its own group with an empty prefix, causal over its tokens;
- decode: one query per sequence over its group's prefix KV (stored once, read once per group) and its own suffix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import rpo_kernels


@dataclass(frozen=True)
class DecodeLayout:
    """Where the KV of one decode step lives in the store (sequences of a group adjacent).

    prefix_slots [total_prefix] int64: store slots of each group's prefix, group after group.
    prefix_indptr [B+1], group_indptr [B+1]: int64 index pointers (see ``rpo_kernels.shared_prefix_attention``).
    suffix_slots [total_suffix] int64 and suffix_indptr [N+1]: each sequence's own tokens, the current one included.
    """

    prefix_slots: torch.Tensor
    prefix_indptr: torch.Tensor
    suffix_slots: torch.Tensor
    suffix_indptr: torch.Tensor
    group_indptr: torch.Tensor


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attention_geometry(hf_model) -> tuple[tuple[int, int, int], float]:
    """((Hq, Hkv, D), softmax scale) of an HF Llama/Qwen2/Qwen3 causal LM, as its own attention uses them."""
    config = hf_model.config
    hq = config.num_attention_heads
    hkv = getattr(config, "num_key_value_heads", None) or hq
    d = getattr(config, "head_dim", None) or config.hidden_size // hq
    return (hq, hkv, d), float(getattr(hf_model.model.layers[0].self_attn, "scaling", d ** -0.5))


def rotary_qkv(attn, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: tuple[int, int, int]):
    """q [T, Hq, D], k/v [T, Hkv, D] of an HF Llama/Qwen2/Qwen3 attention module on packed rows h [T, H].

    ``heads`` = (Hq, Hkv, D); cos/sin [T, 1, D] of the rows' positions. Qwen3's per-head q/k RMSNorm runs before the
    rotary embedding, as in the checkpoint's own forward.
    """
    num_heads, num_kv_heads, head_dim = heads
    t = h.shape[0]
    q = attn.q_proj(h).view(t, num_heads, head_dim)
    k = attn.k_proj(h).view(t, num_kv_heads, head_dim)
    v = attn.v_proj(h).view(t, num_kv_heads, head_dim)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v


class PagedDecoder:
    """Forward passes of an HF causal LM over packed tokens with KV in a ``PrefixKVStore`` (inference only)."""

    def __init__(self, hf_model, *, attention_backend: str | None = None):
        self.hf = hf_model
        core = hf_model.model
        self.embed_tokens, self.layers, self.norm = core.embed_tokens, core.layers, core.norm
        self.rotary_emb, self.lm_head = core.rotary_emb, hf_model.lm_head
        (self.num_heads, self.num_kv_heads, self.head_dim), self.scale = attention_geometry(hf_model)
        self.num_layers = len(self.layers)
        self.backend = attention_backend

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def _qkv(self, attn, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        return rotary_qkv(attn, h, cos, sin, (self.num_heads, self.num_kv_heads, self.head_dim))

    def _run(self, input_ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, store, attend,
             rows: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(input_ids)
        cos, sin = self.rotary_emb(h, positions[None])
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # [T, 1, D]
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            q, k, v = self._qkv(attn, layer.input_layernorm(h), cos, sin)
            store.write(i, slots, k.contiguous(), v.contiguous(), backend=self.backend)
            out = attend(i, q, k, v)
            h = h + attn.o_proj(out.reshape(out.shape[0], -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.lm_head(self.norm(h[rows])).float()

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, positions: torch.Tensor, seq_indptr: torch.Tensor,
                slots: torch.Tensor, store) -> torch.Tensor:
        """Causal forward of S packed sequences; writes their K/V at ``slots``.

        Args:
            input_ids [T] int64, positions [T] int64 (0.. per sequence), seq_indptr [S+1] int64 (sequence s is rows
            seq_indptr[s]:seq_indptr[s+1], none empty), slots [T] int64 store slots of every token.

        Returns:
            logits [S, V] fp32 of the next token after each sequence's last token.
        """
        s = seq_indptr.numel() - 1
        dev = input_ids.device
        empty = torch.empty(0, self.num_kv_heads, self.head_dim, dtype=self.dtype, device=dev)
        zeros = torch.zeros(s + 1, dtype=torch.long, device=dev)
        groups = torch.arange(s + 1, dtype=torch.long, device=dev)

        def attend(layer, q, k, v):
            return rpo_kernels.shared_prefix_attention(q, empty, empty, zeros, k, v, seq_indptr, groups,
                                                       q_indptr=seq_indptr, softmax_scale=self.scale,
                                                       backend=self.backend)

        return self._run(input_ids, positions, slots, store, attend, seq_indptr[1:] - 1)

    @torch.no_grad()
    def decode(self, input_ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, layout: DecodeLayout,
               store) -> torch.Tensor:
        """One decode step of N sequences; writes each new token's K/V at ``slots`` first.

        Args:
            input_ids [N] int64 (each sequence's newest token), positions [N] int64, slots [N] int64 (where that
            token's K/V goes; they are the last entries of each sequence's suffix in ``layout``).

        Returns:
            logits [N, V] fp32 of the following token.
        """

        def attend(layer, q, k, v):
            kc, vc = store.k[layer], store.v[layer]
            ps, ss = layout.prefix_slots, layout.suffix_slots
            return rpo_kernels.shared_prefix_attention(
                q, kc.index_select(0, ps), vc.index_select(0, ps), layout.prefix_indptr,
                kc.index_select(0, ss), vc.index_select(0, ss), layout.suffix_indptr, layout.group_indptr,
                softmax_scale=self.scale, backend=self.backend)

        rows = torch.arange(input_ids.numel(), device=input_ids.device)
        return self._run(input_ids, positions, slots, store, attend, rows)

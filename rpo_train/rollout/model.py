"""The native engine's forward: ``rpo_train.model.decoder.Decoder`` with its KV in lanes
(``rpo_train.rollout.kv_lanes``).

Two attentions, each planned once per forward and shared by every layer:
- prefill: S packed prompts (+ cached prefixes), each causal over its own tokens, as one padded torch SDPA
  ([S, Hq, Tmax, D], right padding is harmless under the causal mask); their K/V are written once into their
  prefix lanes;
- decode: one query per running sequence over its group's prefix lane and its own suffix lane
  (``rpo_kernels.lane_decode_attention`` with a ``rpo_kernels.LanePlan``), after the new token's K/V is written at
  the end of its suffix lane. No host synchronisation and no KV copy inside the layer loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

import rpo_kernels

from ..model.decoder import Decoder
from .kv_lanes import LaneKV


class LaneDecoder(Decoder):
    """Inference forwards of an HF causal LM over packed tokens with KV in a ``LaneKV``."""

    def __init__(self, hf_model, *, attention_backend: str | None = None):
        super().__init__(hf_model)
        self.backend = attention_backend

    @torch.no_grad()
    def prefill(self, sequences: Sequence[Sequence[int]], lanes: Sequence[int], kv: LaneKV) -> torch.Tensor:
        """Causal forward of S token sequences (none empty); writes sequence s's K/V into prefix lane ``lanes[s]``.

        Returns logits [S, V] fp32 of the token after each sequence's last one.
        """
        dev = self.device
        lengths = [len(x) for x in sequences]
        s, tmax = len(lengths), max(lengths)
        ids = torch.tensor([t for x in sequences for t in x], dtype=torch.long, device=dev)
        positions = torch.cat([torch.arange(n) for n in lengths]).to(dev)
        starts = torch.tensor([0] + lengths[:-1]).cumsum(0)
        ends = starts + torch.tensor(lengths) - 1
        # packed row of (sequence, t), clamped to the sequence's last row past its end
        rows = torch.minimum(starts[:, None] + torch.arange(tmax)[None, :], ends[:, None]).flatten().to(dev)
        valid = (torch.arange(tmax)[None, :] < torch.tensor(lengths)[:, None]).flatten().nonzero()[:, 0].to(dev)
        lane_of_row = torch.repeat_interleave(torch.tensor(list(lanes)), torch.tensor(lengths)).to(dev)

        def attend(layer, q, k, v):
            kv.write_prefix(layer, lane_of_row, positions, k, v)

            def padded(x):  # [T, H, D] -> [S, H, Tmax, D]
                return x.index_select(0, rows).view(s, tmax, x.shape[1], x.shape[2]).transpose(1, 2)

            out = F.scaled_dot_product_attention(padded(q), padded(k), padded(v), is_causal=True, scale=self.scale,
                                                 enable_gqa=True)
            return out.transpose(1, 2).reshape(s * tmax, q.shape[1], q.shape[2]).index_select(0, valid)

        h = self.hidden(ids, positions, attend)
        return self.logits(h[ends.to(dev)])

    @torch.no_grad()
    def decode(self, ids: Sequence[int], prefix_lanes: Sequence[int], prefix_lengths: Sequence[int],
               suffix_lanes: Sequence[int], suffix_lengths: Sequence[int], kv: LaneKV) -> torch.Tensor:
        """One decode step of N sequences: sequence n feeds token ``ids[n]``, the ``suffix_lengths[n]``-th token of
        its suffix lane (at position prefix_lengths[n] + suffix_lengths[n] - 1), and attends to its group's prefix
        lane and its suffix so far. Returns logits [N, V] fp32 of the following token."""
        dev = self.device
        shape = kv.shape
        plan = rpo_kernels.plan_lane_decode(prefix_lanes, prefix_lengths, suffix_lanes, suffix_lengths,
                                            prefix_shape=(shape.prefix_lanes, shape.prefix_capacity),
                                            suffix_shape=(shape.suffix_lanes, shape.suffix_capacity), device=dev)
        host = torch.tensor([list(ids), [p + s - 1 for p, s in zip(prefix_lengths, suffix_lengths)],
                             list(suffix_lanes), [s - 1 for s in suffix_lengths]], dtype=torch.long).to(dev)
        token, position, lane, slot = host

        def attend(layer, q, k, v):
            kv.write_suffix(layer, lane, slot, k, v)
            return rpo_kernels.lane_decode_attention(q, kv.k_prefix[layer], kv.v_prefix[layer], kv.k_suffix[layer],
                                                     kv.v_suffix[layer], plan, softmax_scale=self.scale,
                                                     backend=self.backend)

        return self.logits(self.hidden(token, position, attend))

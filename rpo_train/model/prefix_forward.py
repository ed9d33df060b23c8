"""Prefix-once policy forward: the prompt + kept prefix of a group runs ONCE, its G suffixes attend to that one KV.

Samples that share (prompt, prefix) form a group. Every layer runs on packed rows ``[contexts ; suffixes]``:
- the contexts (prompt + prefix, one per group) attend causally to themselves;
- the suffixes attend to their group's context K/V (one copy) and causally to their own rows, at positions that
  continue the context's: ``rpo_kernels.shared_prefix_attention`` (the extend op, planned once per forward from the
  host index pointers and reused by every layer and recomputation) on a GPU, one masked SDPA per group over
  [context ; the group's suffixes] on a CPU.
Gradients from all G suffixes flow into the single context computation. Log-probabilities are then taken once per
distinct (hidden row, target) pair: with ``loss_tokens="full"`` the prefix tokens' log-probs come from the context
pass once and are shared by the G samples (gathered, so their gradients add up), exactly as the per-sample forward
would count them. The result is the [B, T] layout of ``rpo_train.model.policy.build_batch`` (T = longest sample - 1),
so the loss, the old and the reference log-probs are interchangeable between the two forwards.

Works for the Llama / Qwen2 / Qwen3 families through ``rpo_train.model.decoder.Decoder`` (the layer path the rollout
engine uses too; attention here through ``rpo_kernels`` or torch SDPA), any dtype the kernels take;
``checkpoint_layers`` recomputes each layer in the backward.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

import rpo_kernels

from .decoder import Decoder


@dataclass
class PackedGroups:
    """A micro-batch packed group by group.

    ids/positions [Tc + Ts] int64: the contexts (Tc rows, group after group) then the suffixes (sample after sample,
    groups adjacent). context_indptr [C+1], group_indptr [C+1] (samples of group c), suffix_indptr [B+1] (in packed
    order): host ints, so planning the attention needs no device synchronisation. row_hidden/row_targets [R]: the
    distinct (final hidden row, target) pairs whose log-prob is taken; token_rows [A]: for each set entry of
    ``loss_mask`` [B, T] (row-major) its pair in R.
    """

    ids: torch.Tensor
    positions: torch.Tensor
    context_indptr: tuple[int, ...]
    suffix_indptr: tuple[int, ...]
    group_indptr: tuple[int, ...]
    row_hidden: torch.Tensor
    row_targets: torch.Tensor
    token_rows: torch.Tensor
    loss_mask: torch.Tensor
    num_context_rows: int

    def to(self, device: torch.device | str) -> PackedGroups:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return PackedGroups(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in moved.items()})


def pack_groups(samples, loss_tokens: str = "full") -> PackedGroups:
    """Group ``samples`` (``rpo_train.model.policy.PolicySample``) by (prompt, prefix) and pack them for the forward."""
    if loss_tokens not in ("full", "suffix"):
        raise ValueError(f"argument 'loss_tokens' must be 'full' or 'suffix', got {loss_tokens!r}")
    if not samples:
        raise ValueError("argument 'samples' is empty")
    groups: dict[tuple, list[int]] = {}
    for b, s in enumerate(samples):
        groups.setdefault((tuple(s.prompt_ids), tuple(s.prefix_ids)), []).append(b)
    ids, pos, ctx_indptr = [], [], [0]
    for prompt, prefix in groups:
        ids += prompt + prefix
        pos += range(len(prompt) + len(prefix))
        ctx_indptr.append(len(ids))
    tc = len(ids)
    suf_indptr, group_indptr, row_hidden, row_targets = [0], [0], [], []
    token_row: dict[tuple[int, int], int] = {}

    def add_row(hidden: int, target: int) -> int:
        row_hidden.append(hidden)
        row_targets.append(target)
        return len(row_hidden) - 1

    for (key, members), c0 in zip(groups.items(), ctx_indptr):
        ctx = key[0] + key[1]
        p, c = len(key[0]), len(ctx)
        shared = {t: add_row(c0 + t, ctx[t + 1]) for t in range(p - 1, c - 1)} if loss_tokens == "full" else {}
        for b in members:
            suffix = samples[b].suffix_ids
            s0 = len(ids) - tc
            ids += suffix
            pos += range(c, c + len(suffix))
            suf_indptr.append(s0 + len(suffix))
            token_row.update({(b, t): r for t, r in shared.items()})
            if suffix:
                token_row[(b, c - 1)] = add_row(c0 + c - 1, suffix[0])
            for j in range(len(suffix) - 1):
                token_row[(b, c + j)] = add_row(tc + s0 + j, suffix[j + 1])
        group_indptr.append(len(suf_indptr) - 1)
    length = max(len(s.prompt_ids) + len(s.prefix_ids) + len(s.suffix_ids) for s in samples)
    mask = torch.zeros(len(samples), length - 1, dtype=torch.bool)
    ordered = sorted(token_row)
    if ordered:
        mask[torch.tensor([b for b, _ in ordered]), torch.tensor([t for _, t in ordered])] = True

    def lt(x):
        return torch.tensor(x, dtype=torch.long)

    return PackedGroups(lt(ids), lt(pos), tuple(ctx_indptr), tuple(suf_indptr), tuple(group_indptr), lt(row_hidden),
                        lt(row_targets), lt([token_row[k] for k in ordered]), mask, tc)


ATTENTIONS = ("auto", "kernel", "sdpa")


def _sdpa(q, k, v, scale: float, *, causal: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
    """torch SDPA on packed rows: q [M, Hq, D], k/v [L, Hkv, D] -> [M, Hq, D] (GQA by head groups)."""
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], attn_mask=mask, is_causal=causal,
        scale=scale, enable_gqa=True)
    return out[0].transpose(0, 1)


class _PackedAttention:
    """Attention of one packed forward. Contexts: causal SDPA, one call per context. Suffixes, per group:
    ``kernel`` = ``rpo_kernels.shared_prefix_attention`` (all groups in one call, with one plan made here from host
    ints for every layer and recomputation; its Triton forward/backward on a GPU); ``sdpa`` = one SDPA call over keys
    [context ; the group's suffixes] with a mask letting each suffix see the context and, causally, its own rows
    (fastest on a CPU, where the kernel's reference runs eagerly). Either way a group's context K/V exists once."""

    def __init__(self, packed: PackedGroups, scale: float, mode: str):
        if mode not in ATTENTIONS:
            raise ValueError(f"argument 'attention' must be one of {ATTENTIONS}, got {mode!r}")
        self.mode = ("kernel" if packed.ids.is_cuda else "sdpa") if mode == "auto" else mode
        self.scale, self.tc, self.ctx = scale, packed.num_context_rows, packed.context_indptr
        self.groups = []  # (context rows, suffix rows, mask) per group with at least one suffix token
        suf, grp = packed.suffix_indptr, packed.group_indptr
        if self.mode == "kernel":  # every suffix token is a query
            self.plan = rpo_kernels.plan_shared_prefix(self.ctx, suf, grp, suf, device=packed.ids.device)
            return
        for c in range(len(self.ctx) - 1):
            s0, s1 = suf[grp[c]], suf[grp[c + 1]]
            if s1 == s0:
                continue
            n_ctx = self.ctx[c + 1] - self.ctx[c]
            seq = torch.repeat_interleave(torch.arange(grp[c + 1] - grp[c]),
                                          torch.tensor([suf[j + 1] - suf[j] for j in range(grp[c], grp[c + 1])]))
            row = torch.arange(s1 - s0)
            own = (seq[:, None] == seq[None, :]) & (row[None, :] <= row[:, None])
            mask = torch.cat([torch.ones(s1 - s0, n_ctx, dtype=torch.bool), own], 1).to(packed.ids.device)
            self.groups.append(((self.ctx[c], self.ctx[c + 1]), (s0, s1), mask))

    def __call__(self, q, k, v) -> torch.Tensor:
        tc = self.tc
        out = [_sdpa(q[a:b], k[a:b], v[a:b], self.scale, causal=True) for a, b in zip(self.ctx[:-1], self.ctx[1:])]
        if q.shape[0] == tc:
            return torch.cat(out)
        if self.mode == "kernel":
            out.append(rpo_kernels.shared_prefix_attention(q[tc:], k[:tc], v[:tc], k[tc:], v[tc:], self.plan,
                                                           softmax_scale=self.scale))
            return torch.cat(out)
        for (c0, c1), (s0, s1), mask in self.groups:  # the groups' suffix rows follow one another in order
            keys = torch.cat([k[c0:c1], k[tc + s0:tc + s1]])
            values = torch.cat([v[c0:c1], v[tc + s0:tc + s1]])
            out.append(_sdpa(q[tc + s0:tc + s1], keys, values, self.scale, mask=mask))
        return torch.cat(out)


def packed_hidden(model, packed: PackedGroups, *, checkpoint_layers: bool = False,
                  attention: str = "auto") -> torch.Tensor:
    """Hidden states [Tc + Ts, H] (before the final norm) of every packed row; differentiable.

    ``attention``: "kernel" | "sdpa" | "auto" (kernel on a GPU, sdpa on a CPU), see ``_PackedAttention``.
    """
    decoder = Decoder(model)
    attend = _PackedAttention(packed, decoder.scale, attention)
    return decoder.hidden(packed.ids, packed.positions, lambda _, q, k, v: attend(q, k, v),
                          checkpoint_layers=checkpoint_layers)


def prefix_once_logprobs(model, packed: PackedGroups, *, temperature: float = 1.0, return_entropy: bool = False,
                         checkpoint_layers: bool = False, attention: str = "auto"):
    """Per-token log-probs [B, T] fp32 of the sampled tokens (zeros off ``packed.loss_mask``), differentiable.

    ``log p = log_softmax(norm(h) @ W_lm^T / temperature)[target]``, each distinct (row, target) computed once. With
    ``return_entropy`` also the entropy [B, T] (detached) of each position's distribution.
    """
    hidden = packed_hidden(model, packed, checkpoint_layers=checkpoint_layers, attention=attention)
    mask = packed.loss_mask
    logp = torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device)
    if packed.row_hidden.numel() == 0:  # nothing to score: zeros that still belong to the graph
        logp = logp + 0.0 * hidden.sum()
        return (logp, torch.zeros_like(logp)) if return_entropy else logp
    rows = model.model.norm(hidden.index_select(0, packed.row_hidden))
    weight = model.get_output_embeddings().weight.to(rows.dtype)
    lp, ent = rpo_kernels.token_logprobs(rows, weight, packed.row_targets, temperature=temperature,
                                         return_entropy=True)
    logp = logp.masked_scatter(mask, lp.float().index_select(0, packed.token_rows))
    if not return_entropy:
        return logp
    entropy = torch.zeros_like(logp).masked_scatter(mask, ent.detach().float().index_select(0, packed.token_rows))
    return logp, entropy

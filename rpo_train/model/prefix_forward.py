"""Prefix-once policy forward: the prompt + kept prefix of a group runs ONCE, its G suffixes attend to that one KV.

Samples that share (prompt, prefix) form a group. Every layer runs on packed rows ``[contexts ; suffixes]``:
- the contexts (prompt + prefix, one per group) attend causally to themselves;
- the suffixes attend to their group's context K/V (one copy) and causally to their own rows, at positions that
  continue the context's: ``rpo_kernels.shared_prefix_attention`` (the extend op, planned once per forward from the
  host index pointers and reused by every layer and recomputation) on a GPU, masked SDPA over [context ; the group's
  suffixes] on a CPU (groups in padded batches, ``rpo_train.model.shared_attention``).
Gradients from all G suffixes flow into the single context computation. Log-probabilities are then taken once per
distinct (hidden row, target) pair: with ``loss_tokens="full"`` the prefix tokens' log-probs come from the context
pass once and are shared by the G samples (gathered, so their gradients add up), exactly as the per-sample forward
would count them. The result is the [B, T] layout of ``rpo_train.model.policy.build_batch`` (T = longest sample - 1),
so the loss, the old and the reference log-probs are interchangeable between the two forwards.

Works for any decoder-only HF causal LM whose layers pass their kwargs to attention (Llama, Qwen2, Qwen3, Mistral,
SmolLM2, ...), under PEFT/LoRA, the model's own gradient checkpointing, autocast and DDP/FSDP wrappers: the rows
run through the model's own forward, the packed attention through ``rpo_train.model.shared_attention``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields

import torch

import rpo_kernels

from .shared_attention import KWARG, PackedAttention, enable


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
    spans: list[list[tuple[int, int]]] = [[] for _ in samples]  # per sample: its (first row, count) runs, in t order
    firsts = [0] * len(samples)  # per sample: the first position t it scores
    for (key, members), c0 in zip(groups.items(), ctx_indptr):
        ctx = key[0] + key[1]
        p, c = len(key[0]), len(ctx)
        shared = (len(row_hidden), c - p) if loss_tokens == "full" else (len(row_hidden), 0)
        row_hidden += range(c0 + p - 1, c0 + c - 1) if loss_tokens == "full" else ()
        row_targets += ctx[p:] if loss_tokens == "full" else ()
        for b in members:
            suffix = samples[b].suffix_ids
            s0 = len(ids) - tc
            ids += suffix
            pos += range(c, c + len(suffix))
            suf_indptr.append(s0 + len(suffix))
            firsts[b] = p - 1 if loss_tokens == "full" else c - 1
            spans[b] = [shared, (len(row_hidden), len(suffix))]
            if suffix:  # the context's last row predicts the suffix's first token; each suffix row the next one
                row_hidden += [c0 + c - 1, *range(tc + s0, tc + s0 + len(suffix) - 1)]
                row_targets += suffix
        group_indptr.append(len(suf_indptr) - 1)
    length = max(len(s.prompt_ids) + len(s.prefix_ids) + len(s.suffix_ids) for s in samples)
    mask = torch.zeros(len(samples), length - 1, dtype=torch.bool)
    token_rows = []
    for b, runs in enumerate(spans):
        count = sum(n for _, n in runs)
        mask[b, firsts[b]:firsts[b] + count] = True
        token_rows += [r for first, n in runs for r in range(first, first + n)]

    def lt(x):
        return torch.tensor(x, dtype=torch.long)

    return PackedGroups(lt(ids), lt(pos), tuple(ctx_indptr), tuple(suf_indptr), tuple(group_indptr), lt(row_hidden),
                        lt(row_targets), lt(token_rows), mask, tc)


def decoder_output(model, core: torch.nn.Module | None = None, **inputs) -> torch.Tensor:
    """The decoder's output (the final, normed hidden states [B, L, H]) of one call of ``model``'s own forward on
    ``inputs``, read by a forward hook on ``core``'s decoder (``core``: the HF model or PEFT wrapper inside ``model``,
    default ``model``), so that no other layer's hidden states are kept; ``logits_to_keep=1`` keeps the lm_head to
    one position (the fused kernels apply it to the rows that need it, without [B, L, V] logits)."""
    seen: list[torch.Tensor] = []
    hook = (model if core is None else core).get_decoder().register_forward_hook(
        lambda module, args, out: seen.append(out[0]))
    try:
        model(**inputs, logits_to_keep=1, use_cache=False)
    finally:
        hook.remove()
    return seen[-1]


def packed_hidden(model, packed: PackedGroups, *, attention: str = "auto",
                  core: torch.nn.Module | None = None) -> torch.Tensor:
    """Final (normed) hidden states [Tc + Ts, H] of every packed row, through the model's own forward; differentiable.

    ``model`` is what the caller trains (an HF causal LM, a PEFT wrapper, a DDP wrapper); ``core`` the HF model or
    PEFT wrapper inside it when it differs (its decoder's output is read by a forward hook). One
    ``PackedAttention`` plan reaches every layer through the attention kwargs (``rpo_train.model.shared_attention``);
    ``attention``: "kernel" | "sdpa" | "auto" (kernel on a GPU, sdpa on a CPU). Gradient checkpointing is the
    model's own (``gradient_checkpointing_enable``): its recomputation gets the same plan.
    """
    core = model if core is None else core
    enable(core)
    plan = PackedAttention(packed.context_indptr, packed.suffix_indptr, packed.group_indptr, packed.ids.device,
                           attention)
    ids = packed.ids[None]
    return decoder_output(model, core, input_ids=ids, position_ids=packed.positions[None],
                          attention_mask=torch.ones_like(ids), **{KWARG: plan})[0]


def prefix_once_logprobs(model, packed: PackedGroups, *, temperature: float = 1.0, return_entropy: bool = False,
                         attention: str = "auto", core: torch.nn.Module | None = None, head_fp32: bool = False):
    """Per-token log-probs [B, T] fp32 of the sampled tokens (zeros off ``packed.loss_mask``), differentiable.

    ``log p = log_softmax(norm(h) @ W_lm^T / temperature)[target]``, each distinct (row, target) computed once. With
    ``return_entropy`` also the entropy [B, T] (differentiable too) of each position's distribution. ``head_fp32``
    runs the lm_head product in fp32 (TRL's ``cast_lm_head_to_fp32``); ``model``/``core`` as in ``packed_hidden``.
    """
    hidden = packed_hidden(model, packed, attention=attention, core=core)
    mask = packed.loss_mask
    logp = torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device)
    if packed.row_hidden.numel() == 0:  # nothing to score: zeros that still belong to the graph
        logp = logp + 0.0 * hidden.sum()
        return (logp, torch.zeros_like(logp)) if return_entropy else logp
    rows = hidden.index_select(0, packed.row_hidden)
    rows = rows.float() if head_fp32 else rows
    weight = (model if core is None else core).get_output_embeddings().weight.to(rows.dtype)
    with torch.autocast(rows.device.type, enabled=False) if head_fp32 else contextlib.nullcontext():
        lp, ent = rpo_kernels.token_logprobs(rows, weight, packed.row_targets, temperature=temperature,
                                             return_entropy=True)
    logp = logp.masked_scatter(mask, lp.float().index_select(0, packed.token_rows))
    if not return_entropy:
        return logp
    entropy = torch.zeros_like(logp).masked_scatter(mask, ent.float().index_select(0, packed.token_rows))
    return logp, entropy

"""The policy forward of the trainer, behind one function: hidden states of prompt + response through the HF model,
then rpo_kernels' fused lm_head + clipped-ratio loss on them (no [tokens, V] logits).

``loss_tokens="full"`` (the paper's choice) trains on every response token, prefix included; ``"suffix"`` only on the
tokens the current policy generated. Two forwards give the same [B, T] log-probs: ``plain`` runs each sample's
prompt + prefix in full (a right-padded ``PolicyBatch``); ``prefix_once`` (``rpo_train.model.prefix_forward``, a
``PackedGroups`` batch) runs each group's prompt + prefix once and its suffixes against that one KV.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import rpo_kernels

from ..objectives import ObjectiveConfig
from .prefix_forward import PackedGroups, decoder_output, pack_groups, prefix_once_logprobs

FORWARDS = ("plain", "prefix_once")


@dataclass
class PolicySample:
    """One scored response: token ids of the prompt, the kept prefix and the generated suffix."""

    prompt_ids: list[int]
    prefix_ids: list[int]
    suffix_ids: list[int]

    def __post_init__(self):
        if not self.prompt_ids:
            raise ValueError("PolicySample.prompt_ids must not be empty")


@dataclass
class PolicyBatch:
    """Right-padded batch. input_ids/attention_mask [B, L]; targets/loss_mask [B, L-1] (position t predicts t+1)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor

    def to(self, device: torch.device | str) -> PolicyBatch:
        return PolicyBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.targets,
                                                     self.loss_mask)))


def build_batch(samples: list[PolicySample], pad_id: int, loss_tokens: str = "full",
                forward: str = "plain") -> PolicyBatch | PackedGroups:
    """Pack samples for ``forward``: a right-padded ``PolicyBatch`` ("plain") or a ``PackedGroups``
    ("prefix_once"); either way the loss mask covers the response (or only the suffix)."""
    if forward not in FORWARDS:
        raise ValueError(f"argument 'forward' must be one of {FORWARDS}, got {forward!r}")
    if loss_tokens not in ("full", "suffix"):
        raise ValueError(f"argument 'loss_tokens' must be 'full' or 'suffix', got {loss_tokens!r}")
    if not samples:
        raise ValueError("argument 'samples' is empty")
    if forward == "prefix_once":
        return pack_groups(samples, loss_tokens)
    seqs = [s.prompt_ids + s.prefix_ids + s.suffix_ids for s in samples]
    length = max(len(x) for x in seqs)
    ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    attn = torch.zeros(len(samples), length, dtype=torch.long)
    mask = torch.zeros(len(samples), length - 1, dtype=torch.bool)
    for i, (s, seq) in enumerate(zip(samples, seqs)):
        ids[i, :len(seq)] = torch.tensor(seq)
        attn[i, :len(seq)] = 1
        first = len(s.prompt_ids) + (len(s.prefix_ids) if loss_tokens == "suffix" else 0)
        mask[i, first - 1:len(seq) - 1] = True  # the position before a token predicts it
    return PolicyBatch(ids, attn, ids[:, 1:].clone(), mask)


def final_hidden(model: torch.nn.Module, batch: PolicyBatch) -> torch.Tensor:
    """Final (normed) hidden states [B, L-1, H] at the positions that predict ``batch.targets``.

    Through the model's own forward, so that whatever wraps it (a PEFT/LoRA model, gradient checkpointing, sharded
    weights gathered by their wrapper) does its part (``rpo_train.model.prefix_forward.decoder_output``)."""
    return decoder_output(model, input_ids=batch.input_ids, attention_mask=batch.attention_mask)[:, :-1]


@torch.no_grad()
def sequence_logprobs(model: torch.nn.Module, batch: PolicyBatch, temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs [B, L-1] fp32 of the targets (zeros off the loss mask), e.g. old or reference log-probs."""
    if isinstance(batch, PackedGroups):
        return prefix_once_logprobs(model, batch, temperature=temperature)
    hidden = final_hidden(model, batch)
    weight = model.get_output_embeddings().weight.to(hidden.dtype)  # under autocast hidden may be bf16
    logp = torch.zeros(batch.targets.shape, dtype=torch.float32, device=hidden.device)
    active = batch.loss_mask
    logp[active] = rpo_kernels.token_logprobs(hidden[active], weight, batch.targets[active], temperature=temperature)
    return logp


@torch.no_grad()
def response_logprobs(model: torch.nn.Module, prompts: list[list[int]], responses: list[list[int]], pad_id: int,
                      temperature: float = 1.0) -> list[tuple[list[float], list[float]]]:
    """The policy's (log-probs, entropies) of each response token given its prompt, one plain no-grad forward.

    ``log p_t = log_softmax(z_t / T)[a_t]`` and ``H_t = -sum softmax(z_t / T) log softmax(z_t / T)`` at the
    position that predicts response token a_t: the drift probe's reading of cached responses (``rpo_train.drift``).
    """
    batch = build_batch([PolicySample(p, [], r) for p, r in zip(prompts, responses)], pad_id)
    batch = batch.to(next(model.parameters()).device)
    hidden = final_hidden(model, batch)
    weight = model.get_output_embeddings().weight.to(hidden.dtype)
    active = batch.loss_mask
    logp, entropy = rpo_kernels.token_logprobs(hidden[active], weight, batch.targets[active],
                                               temperature=temperature, return_entropy=True)
    sizes = [len(r) for r in responses]
    logp, entropy = logp.float().cpu().split(sizes), entropy.float().cpu().split(sizes)
    return [(a.tolist(), b.tolist()) for a, b in zip(logp, entropy)]


def forward_loss(model: torch.nn.Module, batch: PolicyBatch | PackedGroups, advantages: torch.Tensor,
                 objective: ObjectiveConfig, *, old_logprobs: torch.Tensor | None = None,
                 ref_logprobs: torch.Tensor | None = None, temperature: float = 1.0,
                 max_response_len: int | None = None):
    """(loss, metrics) of one micro-batch: the HF model's hidden states -> fused lm_head + clipped-ratio loss (the
    model's forward around ``rpo_kernels.fused_linear_policy_loss``).

    advantages [B] (one per sample); old/ref log-probs [B, L-1] or None (old None: r = 1, the mu = 1 case).
    Gradient checkpointing, for either forward, is the model's own (``gradient_checkpointing_enable``).
    """
    if isinstance(batch, PackedGroups):
        logp, entropy = prefix_once_logprobs(model, batch, temperature=temperature, return_entropy=True)
        mask = batch.loss_mask
        loss, metrics = rpo_kernels.policy_loss(
            logp, old_logprobs, advantages.to(logp.device), mask,
            ref_logprobs=ref_logprobs if objective.beta > 0 else None, loss_type=objective.loss_type,
            eps_low=objective.eps_low, eps_high=objective.eps_high, beta=objective.beta,
            kl_clamp=objective.kl_clamp or None, max_response_len=max_response_len)
        entropy = entropy.detach()
        metrics["entropy_mean"] = entropy[mask].mean() if bool(mask.any()) else entropy.new_zeros(())
        return loss, metrics
    hidden = final_hidden(model, batch)
    weight = model.get_output_embeddings().weight
    return rpo_kernels.fused_linear_policy_loss(
        hidden, weight.to(hidden.dtype), batch.targets, advantages.to(hidden.device), batch.loss_mask,
        old_logprobs=old_logprobs, ref_logprobs=ref_logprobs if objective.beta > 0 else None,
        loss_type=objective.loss_type, eps_low=objective.eps_low, eps_high=objective.eps_high, beta=objective.beta,
        kl_clamp=objective.kl_clamp or None, temperature=temperature, max_response_len=max_response_len)


def micro_batches(group_sizes: list[int], micro_batch: int) -> list[list[int]]:
    """Sample indices per micro-batch: whole groups packed while they fit ``micro_batch`` samples, so the
    prefix-once forward computes each group's prompt + prefix once; a larger group is split into chunks."""
    out, start = [], 0
    for size in group_sizes:
        if out and len(out[-1]) + size <= micro_batch:
            out[-1] += range(start, start + size)
        else:
            out += [list(range(i, min(i + micro_batch, start + size))) for i in range(start, start + size, micro_batch)]
        start += size
    return out

"""Reference for ``policy_loss``: the clipped-ratio surrogate of GRPO/DAPO with the k3 KL and the ecosystem's
aggregations. This is the one place the GRPO/DAPO loss math is written; everything else imports it.

Per token (A = advantage, logp under the current policy, old under the sampling policy, ref under the reference)::

    r          = exp(logp - old)
    per_token  = -min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A) + beta * min(k3, kl_clamp)
    k3         = exp(ref - logp) - (ref - logp) - 1                     (kl_clamp None: no clamp)

The clamp (verl clamps its k3 at 10 the same way) bounds what one token the current policy has all but ruled out can
weigh: RPO's kept prefixes hold such tokens (sampled long ago, never sampled again), where k3 = exp(ref - logp) reaches
thousands and one token's KL gradient outweighs the whole batch's policy gradient. Beyond the clamp the token has no
KL gradient.

Aggregation over the mask M [B, T] (loss = sum(w * per_token) with the weights w of ``token_weights``)::

    grpo     mean over sequences of (sum_t M * per_token / sum_t M)        sequences with no token count as 0
    dapo     sum(M * per_token) / sum(M)                                   token-level
    bnpo     sum(M * per_token) / sum(M)                                   the local batch's tokens; equal to dapo
                                                                           within one call
    dr_grpo  sum(M * per_token) / (B * max_response_len)                   max_response_len defaults to T
"""

from __future__ import annotations

import torch

LOSS_TYPES = ("grpo", "dapo", "bnpo", "dr_grpo")


def token_weights(mask: torch.Tensor, loss_type: str, max_response_len: int | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Weights [B, T] (``dtype``) with loss = sum(weights * per_token); zero where ``mask`` is 0."""
    m = mask.to(dtype)
    batch, length = m.shape
    if loss_type == "grpo":
        return m / (batch * m.sum(1, keepdim=True).clamp(min=1.0))
    if loss_type in ("dapo", "bnpo"):
        return m / m.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return m / float(batch * (max_response_len or length))
    raise ValueError(f"argument 'loss_type' must be one of {LOSS_TYPES}, got {loss_type!r}")


def per_token_objective(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    eps_low: float,
    eps_high: float,
    beta: float,
    kl_clamp: float | None = None,
) -> dict[str, torch.Tensor]:
    """Per-token loss terms, all [B, T] in fp32 (fp64 for fp64 inputs), zero where ``mask`` is 0 (also in the
    gradient).

    ``advantages`` is [B, T] (per token) here. Returns per_token, ratio, kl (zeros without a reference),
    clipped_low (ratio < 1 - eps_low with A < 0) and clipped_high (ratio > 1 + eps_high with A > 0) as bools.
    """
    active = mask.bool()
    ct = torch.promote_types(logprobs.dtype, torch.float32)
    zero = torch.zeros((), dtype=ct, device=logprobs.device)
    logp = logprobs.to(ct)
    log_ratio = torch.where(active, logp - old_logprobs.to(ct), zero)
    ratio = torch.exp(log_ratio)
    adv = advantages.to(ct)
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv)
    per_token = -surrogate
    kl = torch.zeros_like(ratio)
    if ref_logprobs is not None:
        diff = torch.where(active, ref_logprobs.to(ct) - logp, zero)
        kl = torch.exp(diff) - diff - 1.0
        if kl_clamp is not None:
            kl = torch.clamp(kl, max=kl_clamp)
        if beta != 0.0:
            per_token = per_token + beta * kl
    ratio_d = ratio.detach()
    return {
        "per_token": torch.where(active, per_token, zero),
        "ratio": ratio_d,
        "kl": kl.detach(),
        "clipped_low": active & (ratio_d < 1.0 - eps_low) & (adv < 0),
        "clipped_high": active & (ratio_d > 1.0 + eps_high) & (adv > 0),
    }


def policy_loss_ref(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logprobs: torch.Tensor | None = None,
    loss_type: str = "dapo",
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.0,
    kl_clamp: float | None = None,
    max_response_len: int | None = None,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and metrics on validated inputs (see ``rpo_kernels.policy_loss`` for shapes).

    ``old_logprobs`` None means the detached current logprobs (r = 1). ``advantages`` [B] or [B, T].
    Metrics (detached 0-dim fp32 tensors, averaged over active tokens): clip_frac, clip_frac_low, clip_frac_high,
    ratio_mean, kl_mean (with a reference), entropy_mean (when ``entropy`` [B, T] is given), active_tokens.
    """
    if old_logprobs is None:
        old_logprobs = logprobs.detach()
    adv = advantages[:, None].expand_as(logprobs) if advantages.dim() == 1 else advantages
    terms = per_token_objective(logprobs, old_logprobs, adv, mask, ref_logprobs, eps_low, eps_high, beta, kl_clamp)
    per_token = terms["per_token"]
    loss = (token_weights(mask, loss_type, max_response_len, per_token.dtype) * per_token).sum()

    active = mask.bool()
    count = active.sum().float()
    denom = count.clamp(min=1.0)

    def active_mean(x: torch.Tensor) -> torch.Tensor:
        return torch.where(active, x.float(), 0.0).sum() / denom

    metrics = {
        "clip_frac_low": active_mean(terms["clipped_low"]),
        "clip_frac_high": active_mean(terms["clipped_high"]),
        "clip_frac": active_mean(terms["clipped_low"] | terms["clipped_high"]),
        "ratio_mean": active_mean(terms["ratio"]),
        "active_tokens": count,
    }
    if ref_logprobs is not None:
        metrics["kl_mean"] = active_mean(terms["kl"])
    if entropy is not None:
        metrics["entropy_mean"] = active_mean(entropy.detach())
    return loss, {k: v.detach() for k, v in metrics.items()}

"""Public ``policy_loss`` and ``fused_linear_policy_loss``: validation and dispatch (math in reference/)."""

from __future__ import annotations

import torch

from .._checks import FLOAT_DTYPES, check_finite, check_index_range, check_positive, check_shape, check_tensor
from .._dispatch import resolve_backend
from ..reference.fused_linear_policy_loss import fused_linear_policy_loss_ref
from ..reference.policy_loss import LOSS_TYPES, policy_loss_ref, token_weights
from .token_logprobs import run_token_logprobs, validate_linear_inputs

FUSED_IMPLEMENTED = ("triton", "reference")
# Per-token inputs of the objective; float64 is accepted for analysis (the math runs in fp32 otherwise).
LOSS_DTYPES = FLOAT_DTYPES + (torch.float64,)


def _validate_objective(shape, device, old_logprobs, ref_logprobs, advantages, mask, loss_type, eps_low, eps_high,
                        beta, max_response_len, kl_clamp=None):
    if len(shape) != 2 or 0 in shape:
        raise ValueError(f"the token grid must be [B, T] with B, T > 0, got {tuple(shape)}")
    for name, value in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs)):
        if value is not None:
            check_tensor(name, value, dtypes=LOSS_DTYPES, device=device)
            check_shape(name, value, shape)
    check_tensor("advantages", advantages, ndim=(1, 2), dtypes=LOSS_DTYPES, device=device)
    if tuple(advantages.shape) not in ((shape[0],), tuple(shape)):
        raise ValueError(f"argument 'advantages' must have shape ({shape[0]},) or {tuple(shape)}, "
                         f"got {tuple(advantages.shape)}")
    check_finite("advantages", advantages)
    check_tensor("mask", mask, device=device)
    check_shape("mask", mask, shape)
    if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("argument 'mask' must be bool or hold only 0 and 1")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"argument 'loss_type' must be one of {LOSS_TYPES}, got {loss_type!r}")
    check_positive("eps_low", eps_low, allow_zero=True)
    check_positive("eps_high", eps_high, allow_zero=True)
    if eps_low >= 1.0:
        raise ValueError(f"argument 'eps_low' must be < 1 (the ratio's lower bound is 1 - eps_low), got {eps_low}")
    check_positive("beta", beta, allow_zero=True)
    if beta > 0 and ref_logprobs is None:
        raise ValueError("argument 'ref_logprobs' is required when beta > 0")
    if kl_clamp is not None:
        check_positive("kl_clamp", kl_clamp)
    if max_response_len is not None and (not isinstance(max_response_len, int) or max_response_len <= 0):
        raise ValueError(f"argument 'max_response_len' must be a positive int, got {max_response_len!r}")


def policy_loss(logprobs, old_logprobs, advantages, mask, *, ref_logprobs=None, loss_type="dapo", eps_low=0.2,
                eps_high=0.2, beta=0.0, kl_clamp=None, max_response_len=None):
    """Clipped-ratio policy loss of GRPO/DAPO from per-token log-probabilities.

    Args:
        logprobs: [B, T] float, current policy log-probs of the sampled tokens (differentiable).
        old_logprobs: [B, T] or None (the detached ``logprobs``: r = 1), log-probs under the sampling policy.
        advantages: [B] (one per sequence) or [B, T], finite.
        mask: [B, T] bool or 0/1, the tokens the loss covers.
        ref_logprobs: [B, T] or None; required when beta > 0 (k3 KL to the reference policy).
        loss_type: "grpo" | "dapo" | "bnpo" | "dr_grpo" (aggregation, see ``rpo_kernels.reference.policy_loss``).
        eps_low, eps_high: clip range [1 - eps_low, 1 + eps_high] of the ratio (DAPO clip-higher: eps_high > eps_low).
        beta: weight of the k3 KL term.
        kl_clamp: None, or > 0: each token's k3 is clamped at it (no KL gradient beyond).
        max_response_len: normaliser of ``dr_grpo`` (default T).

    Returns:
        (loss, metrics): loss 0-dim fp32 ``= sum(w * (-min(r*A, clip(r)*A) + beta*min(k3, kl_clamp)))`` with
        ``r = exp(logp - old)``; metrics of detached 0-dim tensors: clip_frac, clip_frac_low, clip_frac_high,
        ratio_mean, active_tokens, kl_mean (with ref_logprobs). An all-zero mask gives loss 0 and zero gradients.
    """
    check_tensor("logprobs", logprobs, ndim=2, dtypes=LOSS_DTYPES)
    _validate_objective(logprobs.shape, logprobs.device, old_logprobs, ref_logprobs, advantages, mask, loss_type,
                        eps_low, eps_high, beta, max_response_len, kl_clamp)
    return policy_loss_ref(logprobs, old_logprobs, advantages, mask, ref_logprobs=ref_logprobs, loss_type=loss_type,
                           eps_low=eps_low, eps_high=eps_high, beta=beta, kl_clamp=kl_clamp,
                           max_response_len=max_response_len)


def fused_linear_policy_loss(hidden, weight, targets, advantages, mask, *, old_logprobs=None, ref_logprobs=None,
                             loss_type="dapo", eps_low=0.2, eps_high=0.2, beta=0.0, kl_clamp=None, temperature=1.0,
                             max_response_len=None, backend=None):
    """``policy_loss`` of ``token_logprobs(hidden, weight, targets)``, with the lm_head fused: no [B*T, V] logits.

    Args:
        hidden: [B, T, H] fp32/fp16/bf16, final hidden states at the positions that predict ``targets``.
        weight: [V, H] lm_head weight, same dtype.
        targets: [B, T] int64 token ids; must be in [0, V) where ``mask`` is set (anything elsewhere).
        advantages, mask, old_logprobs, ref_logprobs, loss_type, eps_low, eps_high, beta, kl_clamp, max_response_len:
            as in ``policy_loss``.
        temperature: logits are divided by it before the softmax (use the sampling temperature).
        backend: None (auto), "triton" or "reference".

    Returns:
        (loss, metrics) as ``policy_loss``, plus metrics["entropy_mean"]; gradients flow to hidden and weight.
        Only the masked-in tokens are projected, so padding costs nothing.
    """
    check_tensor("hidden", hidden, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("targets", targets, ndim=2)
    validate_linear_inputs(hidden, weight, targets, temperature)
    shape = targets.shape
    _validate_objective(shape, hidden.device, old_logprobs, ref_logprobs, advantages, mask, loss_type, eps_low,
                        eps_high, beta, max_response_len, kl_clamp)
    active = mask.bool()
    h_act = hidden[active]
    t_act = targets[active].long()
    check_index_range("targets (where mask is set)", t_act, weight.shape[0])
    chosen = resolve_backend("fused_linear_policy_loss", hidden.device, backend, FUSED_IMPLEMENTED)
    logp = torch.zeros(shape, dtype=torch.float32, device=hidden.device)
    entropy = torch.zeros_like(logp)
    if chosen == "triton":
        lp, ent = run_token_logprobs(h_act, weight, t_act, temperature, True, "triton")
        logp = logp.masked_scatter(active, lp)
        entropy = entropy.masked_scatter(active, ent.detach())
        return policy_loss_ref(logp, old_logprobs, advantages, mask, ref_logprobs=ref_logprobs, loss_type=loss_type,
                               eps_low=eps_low, eps_high=eps_high, beta=beta, kl_clamp=kl_clamp,
                               max_response_len=max_response_len, entropy=entropy)
    adv = advantages[:, None].expand(shape) if advantages.dim() == 1 else advantages
    weights = token_weights(mask, loss_type, max_response_len)[active]

    def pick(x):
        return None if x is None else x[active].float()

    loss, lp, ent = fused_linear_policy_loss_ref(h_act, weight, t_act, pick(old_logprobs), pick(ref_logprobs),
                                                 adv[active].float(), weights, eps_low=eps_low, eps_high=eps_high,
                                                 beta=beta, temperature=temperature, kl_clamp=kl_clamp)
    logp = logp.masked_scatter(active, lp)
    entropy = entropy.masked_scatter(active, ent)
    _, metrics = policy_loss_ref(logp, old_logprobs, advantages, mask, ref_logprobs=ref_logprobs,
                                 loss_type=loss_type, eps_low=eps_low, eps_high=eps_high, beta=beta,
                                 kl_clamp=kl_clamp, max_response_len=max_response_len, entropy=entropy)
    return loss, metrics

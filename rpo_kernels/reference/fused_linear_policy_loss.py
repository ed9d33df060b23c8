"""Reference for ``fused_linear_policy_loss``: lm_head projection + token log-probabilities + clipped-ratio policy
loss, chunked over tokens so the [tokens, V] logits never exist at once.

The math is the composition of ``token_logprobs`` and ``policy_loss`` (both references in this package); this
module only reorganises the work: because the aggregation weights are fixed by the mask, dL/dlogp of a token depends
on that token alone, so each chunk's gradient is computed while its logits are at hand (three matmuls per chunk,
no recompute). The backward then scales the stored gradients, in place, by the incoming gradient.
"""

from __future__ import annotations

import torch

from .policy_loss import per_token_objective
from .token_logprobs import chunk_logits, chunk_rows, dlogits, logits_stats


class _EagerFusedLinearPolicyLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, old, ref, adv, weights, eps_low, eps_high, beta, kl_clamp, temperature,
                rows):
        n = hidden.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty_like(logp)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, n, rows):
            sl = slice(s, s + rows)
            h = hidden[sl]
            logits = chunk_logits(h, weight, temperature)
            lp, ent, lse = logits_stats(logits, targets[sl])
            logp[sl], entropy[sl] = lp, ent
            with torch.enable_grad():
                leaf = lp.detach().requires_grad_(need_h or need_w)
                old_c = lp[None] if old is None else old[sl][None]
                ref_c = None if ref is None else ref[sl][None]
                terms = per_token_objective(leaf[None], old_c, adv[sl][None],
                                            torch.ones_like(leaf[None], dtype=torch.bool), ref_c,
                                            eps_low, eps_high, beta, kl_clamp)
                chunk_loss = (weights[sl][None] * terms["per_token"]).sum()
                if need_h or need_w:
                    (grad_logp,) = torch.autograd.grad(chunk_loss, leaf)
            loss += chunk_loss.detach()
            if need_h or need_w:
                g = dlogits(logits, lse, targets[sl], grad_logp, None, None, temperature)
                if need_h:
                    grad_h[sl] = g.to(weight.dtype) @ weight
                if need_w:
                    grad_w.addmm_(g.t(), h.float())
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype, ctx.used = weight.dtype, False
        ctx.mark_non_differentiable(logp, entropy)
        return loss, logp, entropy

    @staticmethod
    def backward(ctx, grad_loss, _grad_logp, _grad_entropy):
        if ctx.used:
            raise RuntimeError("fused_linear_policy_loss (reference) supports one backward per forward; "
                               "its stored gradients are scaled in place to keep memory flat")
        ctx.used = True
        grad_h, grad_w = ctx.saved_tensors
        if grad_h is not None:
            grad_h.mul_(grad_loss.to(grad_h.dtype))
        if grad_w is not None:
            grad_w = grad_w.mul_(grad_loss).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None, None, None, None, None, None, None, None, None, None


def fused_linear_policy_loss_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    *,
    eps_low: float,
    eps_high: float,
    beta: float,
    temperature: float,
    kl_clamp: float | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss over the ACTIVE tokens only, all inputs flattened to those tokens.

    hidden [n, H], weight [V, H], targets [n] int64, old_logprobs/ref_logprobs/advantages/weights [n] fp32
    (``old_logprobs`` None: the detached current logp, so r = 1).
    Returns (loss, logp [n], entropy [n]); loss = sum(weights * per_token), differentiable in hidden and weight.
    """
    rows = chunk_size or chunk_rows(hidden.shape[0], weight.shape[0])
    return _EagerFusedLinearPolicyLoss.apply(hidden, weight, targets, old_logprobs, ref_logprobs, advantages,
                                             weights, eps_low, eps_high, beta, kl_clamp, float(temperature), rows)

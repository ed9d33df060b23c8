"""Public ``token_logprobs``: validation and backend dispatch."""

from __future__ import annotations

import torch

from .._checks import FLOAT_DTYPES, check_index_range, check_positive, check_tensor
from .._dispatch import resolve_backend
from ..reference.token_logprobs import token_logprobs_ref

IMPLEMENTED = ("triton", "reference")


def validate_linear_inputs(hidden, weight, targets, temperature):
    """Check the hidden/weight/targets triple shared by the linear-head ops; returns (N, H, V)."""
    check_tensor("hidden", hidden, dtypes=FLOAT_DTYPES)
    if hidden.dim() < 1:
        raise ValueError(f"argument 'hidden' must have shape [..., H], got {tuple(hidden.shape)}")
    check_tensor("weight", weight, ndim=2, dtypes=FLOAT_DTYPES, device=hidden.device)
    if weight.dtype != hidden.dtype:
        raise TypeError(f"argument 'weight' must have the dtype of 'hidden' ({hidden.dtype}), got {weight.dtype}")
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"argument 'weight' must have shape [V, {hidden.shape[-1]}] to match 'hidden' "
                         f"[..., {hidden.shape[-1]}], got {tuple(weight.shape)}")
    check_tensor("targets", targets, dtypes=(torch.int64, torch.int32), device=hidden.device)
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"argument 'targets' must have shape {tuple(hidden.shape[:-1])} (hidden's leading dims), "
                         f"got {tuple(targets.shape)}")
    check_positive("temperature", temperature)
    return hidden[..., 0].numel(), hidden.shape[-1], weight.shape[0]


def run_token_logprobs(hidden2d, weight, targets1d, temperature, return_entropy, backend):
    """Dispatch on flattened, validated inputs; returns (logp, entropy or None)."""
    chosen = resolve_backend("token_logprobs", hidden2d.device, backend, IMPLEMENTED)
    if chosen == "triton":
        from ..triton.token_logprobs import TritonTokenLogprobs

        logp, entropy = TritonTokenLogprobs.apply(hidden2d, weight, targets1d, float(temperature),
                                                  return_entropy, None)
        return logp, (entropy if return_entropy else None)
    out = token_logprobs_ref(hidden2d, weight, targets1d, temperature=temperature, return_entropy=return_entropy)
    return out if return_entropy else (out, None)


def token_logprobs(hidden, weight, targets, *, temperature=1.0, return_entropy=False, backend=None):
    """Log-probabilities of ``targets`` under the linear head ``weight`` applied to ``hidden``, without [N, V] logits.

    Args:
        hidden: [N, H] or [..., H], fp32/fp16/bf16 (final hidden states of the policy).
        weight: [V, H], same dtype and device (the lm_head weight).
        targets: [N] or [...] (hidden's leading dims), int64/int32 token ids in [0, V).
        temperature: > 0; logits are divided by it before the softmax.
        return_entropy: also return the entropy of each row's distribution.
        backend: None (auto), "triton" or "reference"; see ``rpo_kernels.backends()``.

    Returns:
        logp [...] fp32, ``logp = z[y] - logsumexp(z)`` with ``z = hidden @ weight^T / temperature``; and, when asked,
        entropy [...] fp32 ``= logsumexp(z) - sum softmax(z) * z``. Both are differentiable in hidden and weight.
    """
    validate_linear_inputs(hidden, weight, targets, temperature)
    lead, h = hidden.shape[:-1], hidden.shape[-1]
    v = weight.shape[0]
    hidden2d = hidden.reshape(-1, h)
    targets1d = targets.reshape(-1).long()
    check_index_range("targets", targets1d, v)
    logp, entropy = run_token_logprobs(hidden2d, weight, targets1d, temperature, return_entropy, backend)
    if return_entropy:
        return logp.view(lead), entropy.view(lead)
    return logp.view(lead)

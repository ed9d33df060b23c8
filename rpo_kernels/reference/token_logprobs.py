"""Reference for ``token_logprobs``: the log-probability of target tokens under a linear head, memory-flat.

Definition, per row n (hidden state h_n, lm_head W [V, H], target y_n, temperature tau)::

    z_n      = (W h_n) / tau                       logits, [V], computed in the inputs' dtype, used in fp32
    lse_n    = log sum_v exp(z_nv)
    logp_n   = z_n[y_n] - lse_n
    entropy_n = lse_n - sum_v softmax(z_n)_v * z_nv

Gradients (p = softmax(z_n), g = dL/dlogp_n, e = dL/dentropy_n)::

    dL/dz_nv = g * (1[v = y_n] - p_v) - e * p_v * (log p_v + entropy_n)
    dL/dh_n  = (dL/dz_n) W / tau,   dL/dW = sum_n (dL/dz_n)^T h_n / tau

Rows are processed in chunks so only [chunk, V] logits exist at a time; the backward recomputes them.
This module is the CPU path, the test oracle and the benchmark baseline; the Triton kernels follow it.
"""

from __future__ import annotations

import torch

# A [rows, V] fp32 block of at most this many elements exists at a time (64 MiB).
CHUNK_ELEMENTS = 1 << 24


def chunk_rows(n_rows: int, vocab: int, multiple: int = 1, budget: int | None = None) -> int:
    """Rows per chunk so a [rows, vocab] block stays within ``budget`` elements (default ``CHUNK_ELEMENTS``);
    a multiple of ``multiple``."""
    budget = budget or CHUNK_ELEMENTS
    rows = max(multiple, (budget // max(vocab, 1)) // multiple * multiple)
    return max(1, min(rows, n_rows))


def chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """fp32 logits [rows, V] of one chunk: matmul in the inputs' dtype (as plain torch does), then upcast."""
    logits = (hidden @ weight.t()).float()
    return logits / temperature if temperature != 1.0 else logits


def logits_stats(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logp [rows], entropy [rows], lse [rows]) of fp32 ``logits`` [rows, V] at ``targets`` [rows]."""
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(1, targets[:, None]).squeeze(1) - lse
    probs = torch.exp(logits - lse[:, None])
    entropy = lse - (probs * logits).sum(-1)
    return logp, entropy, lse


def dlogits(
    logits: torch.Tensor,
    lse: torch.Tensor,
    targets: torch.Tensor,
    grad_logp: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    entropy: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """Gradient with respect to the raw (pre-temperature) logits, fp32 [rows, V], computed in place on ``logits``."""
    logp_all = logits.sub_(lse[:, None])
    probs = torch.exp(logp_all)
    if grad_entropy is not None:
        # -e * p * (log p + H), built in the logits buffer
        grad = logp_all.add_(entropy[:, None]).mul_(probs).mul_(-grad_entropy[:, None])
    else:
        grad = logp_all.zero_()
    if grad_logp is not None:
        grad.sub_(probs.mul_(grad_logp[:, None]))
        grad.scatter_add_(1, targets[:, None], grad_logp[:, None])
    if temperature != 1.0:
        grad.div_(temperature)
    return grad


class _ChunkedTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, want_entropy, rows):
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty_like(logp)
        lse = torch.empty_like(logp)
        for s in range(0, n, rows):
            logits = chunk_logits(hidden[s:s + rows], weight, temperature)
            logp[s:s + rows], entropy[s:s + rows], lse[s:s + rows] = logits_stats(logits, targets[s:s + rows])
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.temperature, ctx.rows = temperature, rows
        ctx.set_materialize_grads(False)
        if not want_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_logp is None and grad_entropy is None:
            return None, None, None, None, None, None
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        rows = ctx.rows
        for s in range(0, hidden.shape[0], rows):
            h = hidden[s:s + rows]
            logits = chunk_logits(h, weight, ctx.temperature)
            g = dlogits(logits, lse[s:s + rows], targets[s:s + rows],
                        None if grad_logp is None else grad_logp[s:s + rows].float(),
                        None if grad_entropy is None else grad_entropy[s:s + rows].float(),
                        entropy[s:s + rows], ctx.temperature)
            if need_h:
                grad_h[s:s + rows] = g.to(weight.dtype) @ weight
            if need_w:
                grad_w.addmm_(g.t(), h.float())
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None


def token_logprobs_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    chunk_size: int | None = None,
):
    """Chunked reference of ``rpo_kernels.token_logprobs`` on validated, flattened inputs.

    hidden [N, H] (fp32/fp16/bf16), weight [V, H] (same dtype), targets [N] int64 in [0, V).
    Returns logp [N] fp32 (and entropy [N] fp32 when ``return_entropy``), differentiable in hidden and weight.
    ``chunk_size`` rows are processed at a time (default: a [chunk, V] fp32 block of 64 MiB).
    """
    rows = chunk_size or chunk_rows(hidden.shape[0], weight.shape[0])
    logp, entropy = _ChunkedTokenLogprobs.apply(hidden, weight, targets, float(temperature), return_entropy, rows)
    return (logp, entropy) if return_entropy else logp

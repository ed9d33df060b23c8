"""Cases and oracles shared by a kernel's own tests and the 16-bit parity tests (tests/kernels/test_kernel_parity.py):
the fused linear policy loss, merge_attention_states and token_logprobs."""

from __future__ import annotations

import torch

from rpo_kernels.reference import policy_loss_ref


# ---- fused_linear_policy_loss ----------------------------------------------------------------------------------------
def unfused(hidden, weight, targets, adv, mask, temperature=1.0, dtype=None, **kw):
    """Full logits in ``dtype`` (fp64 for the oracle), then the policy loss."""
    dtype = dtype or hidden.dtype
    logits = (hidden.to(dtype) @ weight.to(dtype).t())
    logits = (logits.double() if dtype == torch.float64 else logits.float()) / temperature
    logsm = torch.log_softmax(logits, -1)
    safe = torch.where(mask.bool(), targets, 0)
    logp = logsm.gather(-1, safe[..., None]).squeeze(-1)
    entropy = -(logsm.exp() * logsm).sum(-1)
    return policy_loss_ref(logp, kw.pop("old_logprobs", None), adv, mask, entropy=entropy, **kw)


def loss_case(b=3, t=11, h=40, v=257, dtype=torch.float32):
    """(hidden, weight, targets, advantages, mask, old log-probs, ref log-probs) of ``b`` rows of ``t`` tokens, the
    rows ragged (lengths t, 1, 6, t, 1, 6, ...) with -100 targets past their length."""
    hidden = torch.randn(b, t, h).to(dtype)
    weight = (torch.randn(v, h) / h**0.5 * 2).to(dtype)
    targets = torch.randint(0, v, (b, t))
    lengths = torch.tensor([(t, 1, 6)[i % 3] for i in range(b)])
    mask = torch.arange(t)[None] < lengths[:, None]
    targets[~mask] = -100  # padding may carry any id where the mask is off
    with torch.no_grad():
        logp0 = torch.log_softmax((hidden.double() @ weight.double().t()), -1)
        old = logp0.gather(-1, torch.where(mask, targets, 0)[..., None]).squeeze(-1).float()
        old = old + torch.randn_like(old) * 0.3
    return hidden, weight, targets, torch.randn(b), mask, old, old + torch.randn_like(old) * 0.1


def loss_run(fn, hidden, weight):
    """(loss, metrics, d loss/d hidden, d loss/d weight) of ``fn(hidden, weight) -> (loss, metrics)``."""
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    loss, metrics = fn(h, w)
    loss.backward()
    return loss.detach(), metrics, h.grad, w.grad


# ---- merge_attention_states ------------------------------------------------------------------------------------------
def partial_attention(q, k, v, dtype=torch.float64):
    """Attention of q [N, H, D] over k/v [N, L, H, D] (L may be 0): (out [N, H, D], lse [N, H] fp32)."""
    s = torch.einsum("nhd,nlhd->nhl", q.to(dtype), k.to(dtype)) / q.shape[-1] ** 0.5
    lse = torch.logsumexp(s, -1) if k.shape[1] else torch.full(s.shape[:2], float("-inf"), dtype=dtype)
    out = torch.einsum("nhl,nlhd->nhd", torch.softmax(s, -1), v.to(dtype)) if k.shape[1] else q.to(dtype) * 0
    return out, lse.float()


def halves(n, h, d, la, lb, dtype=torch.float32):
    """Random q/k/v split into two key sets of ``la`` and ``lb`` keys: ((out_a, lse_a, out_b, lse_b) with the outputs in
    ``dtype``, the fp64 attention over all keys, its lse)."""
    q, k, v = torch.randn(n, h, d), torch.randn(n, la + lb, h, d), torch.randn(n, la + lb, h, d)
    full, lse_full = partial_attention(q, k, v)
    (oa, sa), (ob, sb) = partial_attention(q, k[:, :la], v[:, :la]), partial_attention(q, k[:, la:], v[:, la:])
    return (oa.to(dtype), sa, ob.to(dtype), sb), full, lse_full


# ---- token_logprobs --------------------------------------------------------------------------------------------------
def naive(hidden, weight, targets, temperature=1.0, dtype=None):
    """Plain torch with full logits: matmul in ``dtype`` (the inputs' by default), softmax in fp32 or fp64."""
    dtype = dtype or hidden.dtype
    logits = hidden.to(dtype) @ weight.to(dtype).t()
    logits = logits.double() if dtype == torch.float64 else logits.float()
    logsm = torch.log_softmax(logits / temperature, dim=-1)
    logp = logsm.gather(-1, targets[..., None].long()).squeeze(-1)
    entropy = -(logsm.exp() * logsm).sum(-1)
    return logp, entropy


def logprobs_case(n_shape, h, v, dtype, scale=1.0):
    """(hidden [*n_shape, h], weight [v, h], targets [*n_shape]) in ``dtype``."""
    hidden = (torch.randn(*n_shape, h) * scale).to(dtype)
    weight = (torch.randn(v, h) / h**0.5 * 2).to(dtype)
    targets = torch.randint(0, v, n_shape)
    return hidden, weight, targets


def grads_of(fn, hidden, weight, c_lp, c_ent):
    """(logp, entropy, d/d hidden, d/d weight) of ``fn(hidden, weight) -> (logp, entropy)``, the gradients of
    sum(c_lp * logp + c_ent * entropy)."""
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    lp, ent = fn(h, w)
    ((lp.double() * c_lp).sum() + (ent.double() * c_ent).sum()).backward()
    return lp.detach(), ent.detach(), h.grad, w.grad

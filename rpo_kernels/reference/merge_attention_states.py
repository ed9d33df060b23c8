"""Reference for ``merge_attention_states``: exact merge of two partial softmax attentions by their log-sum-exp.

A partial attention over a key set K_a gives ``out_a = sum_{j in K_a} softmax_a(s)_j v_j`` and
``lse_a = log sum_{j in K_a} exp(s_j)`` (natural log). For disjoint key sets K_a and K_b::

    lse = log(exp(lse_a) + exp(lse_b))
    out = exp(lse_a - lse) * out_a + exp(lse_b - lse) * out_b

is the attention over K_a u K_b. An empty key set has ``lse = -inf`` and contributes nothing; when both are empty the
result is ``out = 0``, ``lse = -inf``. Computed in fp32, differentiable in all four inputs.
"""

from __future__ import annotations

import torch


def merge_attention_states_ref(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor):
    """Merge two partial attentions. out_* [N, H, D] (any float dtype), lse_* [N, H] float.

    Returns (out [N, H, D] in out_a's dtype, lse [N, H] fp32).
    """
    la, lb = lse_a.float(), lse_b.float()
    top = torch.maximum(la, lb).detach()
    top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
    wa, wb = torch.exp(la - top), torch.exp(lb - top)
    total = wa + wb
    nonzero = total > 0
    safe = torch.where(nonzero, total, torch.ones_like(total))
    lse = torch.where(nonzero, top + torch.log(safe), torch.full_like(total, float("-inf")))
    out = (wa / safe)[..., None] * out_a.float() + (wb / safe)[..., None] * out_b.float()
    return out.to(out_a.dtype), lse

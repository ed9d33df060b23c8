"""policy_loss: the GRPO/DAPO surrogate, aggregations and metrics, checked against hand values and a loop oracle."""

from __future__ import annotations

import math

import pytest
import torch

import rpo_kernels
from rpo_kernels.reference import LOSS_TYPES


def loop_oracle(logp, old, adv, mask, ref, loss_type, eps_low, eps_high, beta, max_len=None):
    """The definition written out token by token, in float64 Python arithmetic."""
    b, t = logp.shape
    per_seq, total, count = [], 0.0, 0
    for i in range(b):
        s, c = 0.0, 0
        for j in range(t):
            if not mask[i, j]:
                continue
            a = float(adv[i]) if adv.dim() == 1 else float(adv[i, j])
            r = math.exp(float(logp[i, j]) - float(old[i, j]))
            term = -min(r * a, min(max(r, 1 - eps_low), 1 + eps_high) * a)
            if ref is not None:
                d = float(ref[i, j]) - float(logp[i, j])
                term += beta * (math.exp(d) - d - 1)
            s, c = s + term, c + 1
        per_seq.append(s / max(c, 1))
        total, count = total + s, count + c
    if loss_type == "grpo":
        return sum(per_seq) / b
    if loss_type in ("dapo", "bnpo"):
        return total / max(count, 1)
    return total / (b * (max_len or t))


def random_case(b=5, t=13, ragged=True):
    logp = -torch.rand(b, t) * 3
    old = logp + torch.randn(b, t) * 0.3
    ref = logp + torch.randn(b, t) * 0.2
    adv = torch.randn(b)
    lengths = torch.randint(0, t + 1, (b,)) if ragged else torch.full((b,), t)
    mask = torch.arange(t)[None] < lengths[:, None]
    return logp, old, ref, adv, mask


def test_hand_computed_example():
    logp = torch.log(torch.tensor([[1.5, 0.5]]))
    loss, m = rpo_kernels.policy_loss(logp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2),
                                      loss_type="dapo", eps_low=0.2, eps_high=0.2)
    # r = [1.5, 0.5]; min(r*A, clip(r)*A) = [1.2, 0.5]; mean of the negatives
    assert loss.item() == pytest.approx(-0.85, abs=1e-6)
    assert m["clip_frac_high"].item() == pytest.approx(0.5)
    assert m["clip_frac_low"].item() == 0.0  # r < 0.8 but A > 0: the low clip is not active
    assert m["ratio_mean"].item() == pytest.approx(1.0)
    assert m["active_tokens"].item() == 2


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("beta,eps_high", [(0.0, 0.28), (0.04, 0.2)])
@pytest.mark.parametrize("token_adv", [False, True])
def test_matches_loop_oracle(loss_type, beta, eps_high, token_adv):
    logp, old, ref, adv, mask = random_case()
    if token_adv:
        adv = torch.randn(logp.shape)
    loss, metrics = rpo_kernels.policy_loss(logp, old, adv, mask, ref_logprobs=ref, loss_type=loss_type,
                                            eps_low=0.2, eps_high=eps_high, beta=beta, max_response_len=20)
    want = loop_oracle(logp.double(), old.double(), adv.double(), mask, ref.double(), loss_type, 0.2, eps_high,
                       beta, max_len=20)
    assert loss.item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    diff = ref - logp
    k3 = (torch.exp(diff) - diff - 1)[mask].mean()
    assert metrics["kl_mean"].item() == pytest.approx(k3.item(), rel=1e-5)
    assert 0.0 <= metrics["clip_frac"].item() <= 1.0


def test_gradient_matches_autograd_of_oracle_formula():
    logp, old, ref, adv, mask = random_case()
    x = logp.clone().double().requires_grad_()
    loss, _ = rpo_kernels.policy_loss(x, old.double(), adv.double(), mask, ref_logprobs=ref.double(),
                                      loss_type="grpo", beta=0.04)
    (g,) = torch.autograd.grad(loss, x)
    eps = 1e-6
    i, j = [int(v) for v in torch.nonzero(mask)[3]]
    bumped = x.detach().clone()
    bumped[i, j] += eps
    lp = rpo_kernels.policy_loss(bumped, old.double(), adv.double(), mask, ref_logprobs=ref.double(),
                                 loss_type="grpo", beta=0.04)[0]
    lm = rpo_kernels.policy_loss(x.detach(), old.double(), adv.double(), mask, ref_logprobs=ref.double(),
                                 loss_type="grpo", beta=0.04)[0]
    assert g[i, j].item() == pytest.approx(((lp - lm) / eps).item(), rel=1e-4, abs=1e-8)
    assert torch.all(g[~mask] == 0)


def test_kl_clamp_bounds_a_ruled_out_token():
    """A token the policy has all but ruled out (logp -15.8, the reference -8.0: k3 = 2,300) weighs at most kl_clamp
    in the loss and has no KL gradient; tokens under the clamp are untouched."""
    logp = torch.tensor([[-15.79, -0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-8.04, -0.4, -1.2]], dtype=torch.float64)
    adv, mask = torch.zeros(1, dtype=torch.float64), torch.ones(1, 3, dtype=torch.bool)
    free, m_free = rpo_kernels.policy_loss(logp, None, adv, mask, ref_logprobs=ref, loss_type="dapo", beta=1.0)
    (g_free,) = torch.autograd.grad(free, logp)
    held, m_held = rpo_kernels.policy_loss(logp, None, adv, mask, ref_logprobs=ref, loss_type="dapo", beta=1.0,
                                           kl_clamp=10.0)
    (g_held,) = torch.autograd.grad(held, logp)
    k3 = [math.exp(r - lp) - (r - lp) - 1 for lp, r in ((-15.79, -8.04), (-0.5, -0.4), (-1.0, -1.2))]
    assert k3[0] > 2000 and free.item() == pytest.approx(sum(k3) / 3, rel=1e-9)
    assert held.item() == pytest.approx((10.0 + k3[1] + k3[2]) / 3, rel=1e-9)
    assert m_held["kl_mean"].item() == pytest.approx(held.item(), rel=1e-6) and m_free["kl_mean"].item() > 600
    assert g_free[0, 0].item() < -600 and g_held[0, 0].item() == 0.0
    assert torch.equal(g_held[0, 1:], g_free[0, 1:])
    with pytest.raises(ValueError, match="kl_clamp"):
        rpo_kernels.policy_loss(logp, None, adv, mask, ref_logprobs=ref, beta=1.0, kl_clamp=0.0)


def test_no_old_logprobs_means_ratio_one():
    logp, _, _, adv, mask = random_case(ragged=False)
    x = logp.clone().requires_grad_()
    loss, m = rpo_kernels.policy_loss(x, None, adv, mask, loss_type="dapo")
    loss.backward()
    w = mask.float() / mask.sum()
    assert loss.item() == pytest.approx(-(w * adv[:, None]).sum().item(), abs=1e-6)
    assert torch.allclose(x.grad, -w * adv[:, None], atol=1e-7)
    assert m["ratio_mean"].item() == pytest.approx(1.0) and m["clip_frac"].item() == 0.0


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_all_zero_mask_gives_zero_loss_and_zero_grads_even_with_garbage(loss_type):
    logp = torch.full((3, 4), float("-inf")).requires_grad_()
    old = torch.full((3, 4), float("nan"))
    loss, m = rpo_kernels.policy_loss(logp, old, torch.ones(3), torch.zeros(3, 4, dtype=torch.bool),
                                      ref_logprobs=torch.zeros(3, 4), beta=0.1, loss_type=loss_type)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logp.grad, torch.zeros(3, 4))
    assert m["active_tokens"].item() == 0 and not math.isnan(m["clip_frac"].item())


def test_masked_positions_do_not_leak():
    logp, old, ref, adv, mask = random_case()
    mask[0, :] = True
    mask[1, :] = False
    base = rpo_kernels.policy_loss(logp, old, adv, mask, ref_logprobs=ref, beta=0.1, loss_type="grpo")[0]
    noisy = logp.clone()
    noisy[~mask] = float("nan")
    got = rpo_kernels.policy_loss(noisy, old, adv, mask, ref_logprobs=ref, beta=0.1, loss_type="grpo")[0]
    assert got.item() == pytest.approx(base.item(), abs=1e-7)


def test_dr_grpo_uses_max_response_len():
    logp, old, _, adv, mask = random_case(ragged=False)
    a = rpo_kernels.policy_loss(logp, old, adv, mask, loss_type="dr_grpo")[0]
    b = rpo_kernels.policy_loss(logp, old, adv, mask, loss_type="dr_grpo", max_response_len=2 * logp.shape[1])[0]
    assert b.item() == pytest.approx(a.item() / 2, rel=1e-6)


@pytest.mark.parametrize("change,err,match", [
    (dict(loss_type="ppo"), ValueError, "loss_type"),
    (dict(eps_low=-0.1), ValueError, "eps_low"),
    (dict(eps_low=1.0), ValueError, "eps_low"),
    (dict(eps_high=float("nan")), ValueError, "eps_high"),
    (dict(beta=0.1), ValueError, "ref_logprobs"),
    (dict(beta=-1.0, ref_logprobs=torch.zeros(2, 3)), ValueError, "beta"),
    (dict(advantages=torch.tensor([1.0, float("nan")])), ValueError, "advantages"),
    (dict(advantages=torch.tensor([1.0, float("inf")])), ValueError, "advantages"),
    (dict(advantages=torch.ones(3)), ValueError, "advantages"),
    (dict(mask=torch.ones(2, 4)), ValueError, "mask"),
    (dict(mask=torch.full((2, 3), 2.0)), ValueError, "mask"),
    (dict(old_logprobs=torch.zeros(3, 2)), ValueError, "old_logprobs"),
    (dict(logprobs=torch.zeros(2, 3, 1)), ValueError, "logprobs"),
    (dict(logprobs=torch.zeros(0, 3), mask=torch.ones(0, 3), advantages=torch.ones(0), old_logprobs=None),
     ValueError, "B, T > 0"),
    (dict(max_response_len=0), ValueError, "max_response_len"),
])
def test_bad_input_names_the_argument(change, err, match):
    args = dict(logprobs=torch.zeros(2, 3), old_logprobs=torch.zeros(2, 3), advantages=torch.ones(2),
                mask=torch.ones(2, 3))
    args.update(change)
    with pytest.raises(err, match=match):
        rpo_kernels.policy_loss(args.pop("logprobs"), args.pop("old_logprobs"), args.pop("advantages"),
                                args.pop("mask"), **args)

"""fused_linear_policy_loss equals policy_loss of full-logits log-probs, in value, metrics and gradients."""

from __future__ import annotations

import pytest
import torch

import rpo_kernels
from rpo_kernels.reference import LOSS_TYPES
from tests.helpers.kernel_cases import loss_case, loss_run, unfused
from tests.helpers.rules import assert_within_rule, max_abs_err

BACKENDS = ["reference", "triton"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("with_old,beta,temperature", [(True, 0.0, 1.0), (False, 0.04, 0.7), (True, 0.04, 1.0)])
def test_matches_unfused_fp32(backend, loss_type, with_old, beta, temperature):
    hidden, weight, targets, adv, mask, old, ref = loss_case()
    kw = dict(old_logprobs=old if with_old else None, ref_logprobs=ref, loss_type=loss_type, eps_low=0.2,
              eps_high=0.28, beta=beta)
    ours = loss_run(lambda h, w: rpo_kernels.fused_linear_policy_loss(h, w, targets, adv, mask, temperature=temperature,
                                                                      backend=backend, **kw), hidden, weight)
    want = loss_run(lambda h, w: unfused(h, w, targets, adv, mask, temperature, dtype=torch.float64, **kw),
                    hidden.double(), weight.double())
    assert ours[0].item() == pytest.approx(want[0].item(), rel=1e-5, abs=1e-6)
    for key in ("clip_frac", "clip_frac_low", "clip_frac_high", "active_tokens", "kl_mean"):
        assert ours[1][key].item() == pytest.approx(want[1][key].item(), abs=1e-5), key
    assert ours[1]["entropy_mean"].item() == pytest.approx(want[1]["entropy_mean"].item(), rel=1e-5)
    scale = max(want[2].abs().max().item(), want[3].abs().max().item())
    assert max_abs_err(ours[2], want[2]) <= 1e-5 * scale
    assert max_abs_err(ours[3], want[3]) <= 1e-5 * scale


@pytest.mark.parametrize("backend", BACKENDS)
def test_kl_clamp_matches_unfused(backend):
    """The clamp of the k3 term in the fused chunks equals policy_loss's (some tokens far past it: ref - logp ~ 6)."""
    hidden, weight, targets, adv, mask, old, ref = loss_case()
    kw = dict(old_logprobs=old, ref_logprobs=ref + 6.0 * (torch.rand_like(ref) < 0.3), loss_type="grpo", beta=0.5,
              kl_clamp=2.0)
    ours = loss_run(lambda h, w: rpo_kernels.fused_linear_policy_loss(h, w, targets, adv, mask, backend=backend, **kw),
                    hidden, weight)
    want = loss_run(lambda h, w: unfused(h, w, targets, adv, mask, dtype=torch.float64, **kw),
                    hidden.double(), weight.double())
    unclamped = loss_run(lambda h, w: unfused(h, w, targets, adv, mask, dtype=torch.float64,
                                              **{**kw, "kl_clamp": None}),
                         hidden.double(), weight.double())
    assert unclamped[0].item() > want[0].item() + 0.1  # the case does reach the clamp
    assert ours[0].item() == pytest.approx(want[0].item(), rel=1e-5, abs=1e-6)
    scale = max(want[2].abs().max().item(), want[3].abs().max().item())
    assert max_abs_err(ours[2], want[2]) <= 1e-5 * scale
    assert max_abs_err(ours[3], want[3]) <= 1e-5 * scale


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,atol", [(torch.bfloat16, 1e-3), (torch.float16, 5e-4)])
def test_low_precision_within_rule(backend, dtype, atol):
    hidden, weight, targets, adv, mask, old, ref = loss_case(dtype=dtype)
    kw = dict(old_logprobs=old, loss_type="grpo")
    ours = loss_run(lambda h, w: rpo_kernels.fused_linear_policy_loss(h, w, targets, adv, mask, backend=backend, **kw),
                    hidden, weight)
    oracle = loss_run(lambda h, w: unfused(h, w, targets, adv, mask, dtype=torch.float64, **kw),
                      hidden.double(), weight.double())
    lowp = loss_run(lambda h, w: unfused(h, w, targets, adv, mask, **kw), hidden, weight)
    for name, i in (("loss", 0), ("grad_hidden", 2), ("grad_weight", 3)):
        assert_within_rule(ours[i], oracle[i], lowp[i], atol=atol * (1 + oracle[i].abs().max().item()), name=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_zero_mask(backend):
    hidden, weight, targets, adv, _, old, _ = loss_case()
    mask = torch.zeros(targets.shape, dtype=torch.bool)
    loss, metrics, gh, gw = loss_run(lambda h, w: rpo_kernels.fused_linear_policy_loss(
        h, w, targets, adv, mask, old_logprobs=old, loss_type="grpo", backend=backend), hidden, weight)
    assert loss.item() == 0.0 and metrics["active_tokens"].item() == 0
    assert torch.count_nonzero(gh) == 0 and torch.count_nonzero(gw) == 0


def test_without_grad_returns_loss():
    hidden, weight, targets, adv, mask, old, _ = loss_case()
    with torch.no_grad():
        loss, _ = rpo_kernels.fused_linear_policy_loss(hidden, weight, targets, adv, mask, old_logprobs=old)
    want, _ = unfused(hidden.double(), weight.double(), targets, adv, mask, dtype=torch.float64, old_logprobs=old)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("change,err,match", [
    (dict(hidden=torch.randn(2, 3)), ValueError, "hidden"),
    (dict(targets=torch.randint(0, 9, (2, 4))), ValueError, "targets"),
    (dict(targets=torch.full((2, 3), 9)), ValueError, r"targets \(where mask is set\)"),
    (dict(weight=torch.randn(9, 5)), ValueError, "weight"),
    (dict(loss_type="x"), ValueError, "loss_type"),
    (dict(advantages=torch.tensor([0.0, float("nan")])), ValueError, "advantages"),
    (dict(temperature=-1.0), ValueError, "temperature"),
])
def test_bad_input_names_the_argument(change, err, match):
    args = dict(hidden=torch.randn(2, 3, 4), weight=torch.randn(9, 4), targets=torch.randint(0, 9, (2, 3)),
                advantages=torch.ones(2), mask=torch.ones(2, 3, dtype=torch.bool))
    args.update(change)
    with pytest.raises(err, match=match):
        rpo_kernels.fused_linear_policy_loss(args.pop("hidden"), args.pop("weight"), args.pop("targets"),
                                             args.pop("advantages"), args.pop("mask"), **args)


@pytest.mark.gpu
def test_triton_gpu_bf16_large_vocab():
    hidden, weight, targets, adv, mask, old, _ = loss_case(b=4, t=256, h=1024, v=151936, dtype=torch.bfloat16)
    dev = [x.cuda() for x in (hidden, weight, targets, adv, mask, old)]
    hidden, weight, targets, adv, mask, old = dev
    kw = dict(old_logprobs=old, loss_type="dapo")
    ours = loss_run(lambda h, w: rpo_kernels.fused_linear_policy_loss(h, w, targets, adv, mask, backend="triton", **kw),
                    hidden, weight)
    oracle = loss_run(lambda h, w: unfused(h, w, targets, adv, mask, dtype=torch.float32, **kw), hidden.float(),
                      weight.float())
    lowp = loss_run(lambda h, w: unfused(h, w, targets, adv, mask, **kw), hidden, weight)
    for name, i in (("loss", 0), ("grad_hidden", 2), ("grad_weight", 3)):
        assert_within_rule(ours[i], oracle[i], lowp[i], atol=1e-3 * (1 + oracle[i].abs().max().item()), name=name)

"""Every kernel against its float64 oracle at 16-bit precision, under the 2x rule of tests/helpers/rules.py, on every
backend that can run on the ``device`` fixture.

On a GPU (the GPU suite, scripts/gpu_suite.sh) the cases have GPU sizes and the Triton kernels and the CUDA extension
run for real; the low-precision baseline is plain torch on the same device. On a CPU the same tests run at rehearsal
size (the reference everywhere, Triton fp16 through the interpreter) so that this file cannot rot between GPU visits.
Forward values and, where the kernel is differentiable, the gradients of every input are checked.
"""

from __future__ import annotations

import pytest
import torch

import rpo_kernels
from rpo_kernels._dispatch import backend_status
from tests.helpers.attention_cases import DIFF_NAMES, attend, make_case, on, sdpa_oracle
from tests.helpers.kernel_cases import grads_of, logprobs_case, loss_case, loss_run, naive, unfused
from tests.helpers.rules import assert_within_rule

pytestmark = pytest.mark.parity

LOWP = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]
ATOL = {torch.bfloat16: 2e-3, torch.float16: 1e-3}


def need(backend: str, dtype: torch.dtype, device: torch.device) -> None:
    """Skip, saying why, when ``backend`` cannot run ``dtype`` on ``device``."""
    ok, why = backend_status(backend, device)
    if not ok:
        pytest.skip(f"backend {backend} cannot run on {device}: {why}")
    if backend == "triton" and device.type == "cpu" and dtype == torch.bfloat16:
        pytest.skip("bf16 math is wrong in the Triton CPU interpreter; this case runs on a GPU (scripts/gpu_suite.sh)")


def gpu(device: torch.device) -> bool:
    return device.type == "cuda"


# ---- token_logprobs ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("dtype", LOWP)
def test_token_logprobs(device, backend, dtype):
    need(backend, dtype, device)
    n, h, v = (777, 896, 50_257) if gpu(device) else (37, 45, 1001)
    hidden, weight, targets = (x.to(device) for x in logprobs_case((n,), h, v, dtype))
    c_lp, c_ent = (torch.randn(n, dtype=torch.float64, device=device) for _ in range(2))
    ours = grads_of(lambda a, b: rpo_kernels.token_logprobs(a, b, targets, temperature=0.7, return_entropy=True,
                                                            backend=backend), hidden, weight, c_lp, c_ent)
    oracle = grads_of(lambda a, b: naive(a.double(), b.double(), targets, 0.7), hidden, weight, c_lp, c_ent)
    lowp = grads_of(lambda a, b: naive(a, b, targets, 0.7), hidden, weight, c_lp, c_ent)
    for name, mine, ref, low in zip(("logp", "entropy", "grad_hidden", "grad_weight"), ours, oracle, lowp):
        assert_within_rule(mine, ref, low, atol=ATOL[dtype] * (1 + ref.abs().max().item()), name=f"{backend} {name}")


# ---- fused_linear_policy_loss ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_fused_linear_policy_loss(device, backend, dtype, loss_type):
    need(backend, dtype, device)
    shape = dict(b=3, t=257, h=896, v=50_257) if gpu(device) else dict(b=3, t=11, h=40, v=257)
    hidden, weight, targets, adv, mask, old, ref = (x.to(device) for x in loss_case(dtype=dtype, **shape))
    kw = dict(old_logprobs=old, ref_logprobs=ref, loss_type=loss_type, beta=0.04, eps_high=0.28)
    ours = loss_run(lambda h, w: rpo_kernels.fused_linear_policy_loss(h, w, targets, adv, mask, temperature=0.7,
                                                                      backend=backend, **kw), hidden, weight)
    oracle = loss_run(lambda h, w: unfused(h, w, targets, adv, mask, 0.7, dtype=torch.float64, **kw),
                      hidden.double(), weight.double())
    lowp = loss_run(lambda h, w: unfused(h, w, targets, adv, mask, 0.7, **kw), hidden, weight)
    for name, i in (("loss", 0), ("grad_hidden", 2), ("grad_weight", 3)):
        assert_within_rule(ours[i], oracle[i], lowp[i], atol=ATOL[dtype] * (1 + oracle[i].abs().max().item()),
                           name=f"{backend} {name}")


# ---- shared_prefix_attention -------------------------------------------------------------------------------------
def extend_cases(device):
    """(glens, plens, Hq, Hkv, D, max_q, noncontig): ragged groups, an empty prefix, GQA 4:1 and 8:1, from the last
    token only (max_q = 1) to 40 queries per sequence."""
    if gpu(device):
        return [([5, 1, 3], [1000, 0, 37], 8, 2, 128, 40, False), ([16, 5, 1, 7], [4096, 37, 0, 1000], 32, 8, 128, 1,
                False), ([3, 16], [1, 2000], 8, 1, 64, 8, True)]
    return [([2, 1], [37, 0], 4, 2, 64, 4, False), ([3, 1], [37, 0], 4, 2, 64, 1, False), ([2], [5], 8, 1, 64, 3, True)]


def _attention_grads(fn, case, leaf_dtype, weights):
    leaves = {n: case[n].detach().to(leaf_dtype).requires_grad_() for n in DIFF_NAMES}
    out = fn(leaves)
    (out.double() * weights).sum().backward()
    return out.detach().cpu(), {n: leaves[n].grad.cpu() for n in DIFF_NAMES}


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("which", [0, 1, 2])
def test_shared_prefix_forward_backward(device, backend, dtype, which):
    need(backend, dtype, device)
    glens, plens, hq, hkv, d, max_q, noncontig = extend_cases(device)[which]
    case = make_case(glens, plens, hq, hkv, d, extend=True, max_q=max_q, dtype=dtype, noncontig=noncontig,
                     seed=40 + which)
    here = on(device, case)
    weights = torch.randn(sdpa_oracle(case).shape, dtype=torch.float64)
    out, mine = _attention_grads(lambda x: attend(here, backend, tensors=x), here, dtype, weights.to(device))
    ref_out, want = _attention_grads(lambda x: sdpa_oracle(case, tensors=x), case, torch.float64, weights)
    low_out, low = _attention_grads(lambda x: sdpa_oracle(here, dtype=dtype, tensors=x), here, dtype,
                                    weights.to(device))
    assert out.dtype == dtype
    assert_within_rule(out, ref_out, low_out, atol=ATOL[dtype], name=f"{backend} out")
    for name in DIFF_NAMES:
        assert_within_rule(mine[name], want[name], low[name], atol=10 * ATOL[dtype], name=f"{backend} grad {name}")

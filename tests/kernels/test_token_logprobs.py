"""token_logprobs against a full-logits float64 oracle, for every backend, on irregular shapes."""

from __future__ import annotations

import pytest
import torch

import rpo_kernels
from rpo_kernels.triton.token_logprobs import TritonTokenLogprobs, logprob_stats
from tests.helpers.kernel_cases import grads_of, logprobs_case, naive
from tests.helpers.rules import assert_within_rule, max_abs_err

BACKENDS = ["reference", "triton"]
# (dtype, atol): atol covers the fp32 floor; low precision is judged against plain torch's own error.
DTYPES = [(torch.float32, 2e-5), (torch.bfloat16, 2e-3), (torch.float16, 1e-3)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,atol", DTYPES)
@pytest.mark.parametrize("n_shape,h,v,temperature", [((37,), 45, 1001, 1.0), ((2, 19), 64, 300, 0.7),
                                                     ((1,), 16, 17, 1.3)])
def test_values_and_grads_match_oracle(backend, dtype, atol, n_shape, h, v, temperature):
    hidden, weight, targets = logprobs_case(n_shape, h, v, dtype)
    c_lp, c_ent = torch.randn(n_shape, dtype=torch.float64), torch.randn(n_shape, dtype=torch.float64)
    ours = grads_of(lambda a, b: rpo_kernels.token_logprobs(a, b, targets, temperature=temperature,
                                                            return_entropy=True, backend=backend),
                    hidden, weight, c_lp, c_ent)
    oracle = grads_of(lambda a, b: naive(a.double(), b.double(), targets, temperature), hidden, weight, c_lp, c_ent)
    lowp = grads_of(lambda a, b: naive(a, b, targets, temperature), hidden, weight, c_lp, c_ent)
    for name, mine, ref, low in zip(("logp", "entropy", "grad_hidden", "grad_weight"), ours, oracle, lowp):
        assert mine.dtype == (torch.float32 if name in ("logp", "entropy") else dtype)
        assert_within_rule(mine, ref, low, atol=atol * (1 + ref.abs().max().item()), name=f"{backend} {name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs_and_int32_targets(backend):
    base_h = torch.randn(23, 2 * 40)
    hidden = base_h[:, ::2]  # stride (80, 2)
    weight = torch.randn(40, 333).t()  # [V=333, H=40], stride (1, 333)
    targets = torch.randint(0, 333, (23,), dtype=torch.int32)
    assert not hidden.is_contiguous() and not weight.is_contiguous()
    got = rpo_kernels.token_logprobs(hidden, weight, targets, backend=backend)
    want, _ = naive(hidden.double(), weight.double(), targets)
    assert max_abs_err(got, want) < 2e-5


def test_triton_backward_is_independent_of_chunking():
    hidden, weight, targets = logprobs_case((200,), 40, 300, torch.float32)
    grads = []
    for chunk in (64, 128, None):
        h = hidden.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        lp, _ = TritonTokenLogprobs.apply(h, w, targets, 1.0, False, chunk)
        lp.sum().backward()
        grads.append((h.grad, w.grad))
    for gh, gw in grads[1:]:
        assert torch.equal(gw, grads[0][1]), "dW must not depend on the backward chunk size"
        assert torch.equal(gh, grads[0][0])


def test_triton_vocab_splits_merge_exactly():
    hidden, weight, targets = logprobs_case((20,), 32, 700, torch.float32)
    one = logprob_stats(hidden, weight, targets, 1.0, True, num_splits=1)
    three = logprob_stats(hidden, weight, targets, 1.0, True, num_splits=3)
    want_lp, want_ent = naive(hidden.double(), weight.double(), targets)
    for got in (one, three):
        assert max_abs_err(got[0], want_lp) < 2e-5 and max_abs_err(got[1], want_ent) < 2e-5


def test_reference_chunking_does_not_change_results():
    from rpo_kernels.reference.token_logprobs import token_logprobs_ref

    hidden, weight, targets = logprobs_case((50,), 24, 99, torch.float32)
    a = token_logprobs_ref(hidden, weight, targets, chunk_size=7)
    b = token_logprobs_ref(hidden, weight, targets, chunk_size=50)
    assert max_abs_err(a, b) < 1e-6


def test_reference_never_builds_full_logits(monkeypatch):
    """The reference projects at most one chunk of rows at a time."""
    from rpo_kernels.reference import token_logprobs as mod

    seen = []
    real = mod.chunk_logits
    monkeypatch.setattr(mod, "chunk_logits", lambda h, w, t: seen.append(h.shape[0]) or real(h, w, t))
    monkeypatch.setattr(mod, "CHUNK_ELEMENTS", 5000)
    hidden, weight, targets = logprobs_case((300,), 8, 1000, torch.float32)
    logp = rpo_kernels.token_logprobs(hidden.requires_grad_(), weight, targets, backend="reference")
    logp.sum().backward()
    assert max(seen) == 5 and sum(seen) == 2 * 300  # forward + backward recompute, 5 rows of 1000 at a time


def test_entropy_not_requested_has_no_grad_path():
    hidden, weight, targets = logprobs_case((5,), 8, 11, torch.float32)
    out = rpo_kernels.token_logprobs(hidden.requires_grad_(), weight, targets)
    assert isinstance(out, torch.Tensor) and out.shape == (5,) and out.requires_grad


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(weight=torch.randn(10, 7)), ValueError, "weight"),
    (dict(weight=torch.randn(10, 8, dtype=torch.float64)), TypeError, "weight"),
    (dict(targets=torch.tensor([0, 1, 10])), ValueError, r"targets.*\[0, 10\)"),
    (dict(targets=torch.tensor([0, -1, 2])), ValueError, "targets"),
    (dict(targets=torch.tensor([0, 1])), ValueError, "targets"),
    (dict(targets=torch.tensor([0.0, 1.0, 2.0])), TypeError, "targets"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(weight=torch.randn(10, 8, device="meta")), ValueError, "weight"),
    (dict(backend="nope"), ValueError, "backend"),
    (dict(hidden=[[1.0] * 8] * 3), TypeError, "hidden"),
])
def test_bad_input_names_the_argument(kwargs, err, match):
    args = dict(hidden=torch.randn(3, 8), weight=torch.randn(10, 8), targets=torch.tensor([0, 1, 2]))
    args.update(kwargs)
    with pytest.raises(err, match=match):
        rpo_kernels.token_logprobs(args.pop("hidden"), args.pop("weight"), args.pop("targets"), **args)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol", [(torch.bfloat16, 2e-3), (torch.float32, 2e-5)])
def test_triton_on_gpu_large_vocab(dtype, atol):
    hidden, weight, targets = (x.cuda() for x in logprobs_case((1000,), 1024, 151936, dtype))
    c = torch.randn(1000, dtype=torch.float64, device="cuda")
    ours = grads_of(lambda a, b: rpo_kernels.token_logprobs(a, b, targets, return_entropy=True, backend="triton"),
                    hidden, weight, c, c)
    oracle = grads_of(lambda a, b: naive(a.float(), b.float(), targets), hidden, weight, c, c)
    lowp = grads_of(lambda a, b: naive(a, b, targets), hidden, weight, c, c)
    for name, mine, ref, low in zip(("logp", "entropy", "grad_hidden", "grad_weight"), ours, oracle, lowp):
        assert_within_rule(mine, ref, low, atol=atol * (1 + ref.abs().max().item()), name=name)

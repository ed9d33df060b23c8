"""merge_attention_states: merging the partial attentions over two halves of a key set gives the full attention."""

from __future__ import annotations

import pytest
import torch

import rpo_kernels
from tests.helpers.kernel_cases import halves
from tests.helpers.rules import assert_within_rule, max_abs_err

BOTH = ("reference", "triton")


@pytest.mark.parametrize("backend", BOTH)
@pytest.mark.parametrize("n,h,d,la,lb", [(7, 3, 64, 5, 11), (33, 8, 128, 1, 40), (5, 2, 80, 0, 9), (4, 4, 64, 6, 0)])
def test_merged_halves_equal_full_attention(backend, n, h, d, la, lb):
    states, full, lse_full = halves(n, h, d, la, lb)
    out, lse = rpo_kernels.merge_attention_states(*states, backend=backend)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    assert max_abs_err(out, full) < 1e-5 and max_abs_err(lse, lse_full) < 1e-5


@pytest.mark.parametrize("backend", BOTH)
@pytest.mark.parametrize("dtype,atol", [(torch.bfloat16, 2e-3), (torch.float16, 1e-3)])
def test_low_precision_within_rule(backend, dtype, atol):
    states, full, _ = halves(19, 4, 64, 13, 6, dtype)
    out, _ = rpo_kernels.merge_attention_states(*states, backend=backend)
    oa, sa, ob, sb = states
    wa = torch.sigmoid(sa - sb)[..., None].to(dtype)  # torch in low precision: exp(lse_a - lse) = sigmoid(a - b)
    low = wa * oa + (1 - wa) * ob
    assert out.dtype == dtype
    assert_within_rule(out, full, low, atol=atol)


@pytest.mark.parametrize("backend", BOTH)
def test_both_empty_gives_zero_and_minus_inf_and_non_contiguous_inputs_work(backend):
    out_a = torch.randn(6, 3, 2 * 64)[..., ::2]
    lse_a = torch.randn(3, 6).t()
    lse_a[2] = float("-inf")
    lse_b = torch.randn(6, 3)
    lse_b[2] = float("-inf")
    out_b = torch.randn(6, 3, 64)
    out, lse = rpo_kernels.merge_attention_states(out_a, lse_a, out_b, lse_b, backend=backend)
    assert bool((out[2] == 0).all()) and bool(torch.isneginf(lse[2]).all())
    want, want_lse = rpo_kernels.merge_attention_states(out_a.contiguous(), lse_a.contiguous(), out_b, lse_b,
                                                        backend="reference")
    assert max_abs_err(out, want) < 1e-6 and max_abs_err(lse[:2], want_lse[:2]) < 1e-6


def test_triton_gradients_match_reference():
    states, _, _ = halves(9, 4, 64, 7, 3)
    grads = []
    for backend in BOTH:
        leaves = [x.detach().clone().requires_grad_() for x in states]
        out, lse = rpo_kernels.merge_attention_states(*leaves, backend=backend)
        (out.sin().sum() + lse.cos().sum()).backward()
        grads.append([x.grad for x in leaves])
    for a, b in zip(*grads):
        assert max_abs_err(a, b) < 1e-5


@pytest.mark.parametrize("name,exc,args", [
    ("out_a", TypeError, lambda a, la, b, lb: (a.long(), la, b, lb)),
    ("out_b", TypeError, lambda a, la, b, lb: (a, la, b.half(), lb)),
    ("out_b", ValueError, lambda a, la, b, lb: (a, la, b[:, :2], lb)),
    ("lse_a", TypeError, lambda a, la, b, lb: (a, la.half(), b, lb)),
    ("lse_b", ValueError, lambda a, la, b, lb: (a, la, b, lb[:3])),
    ("lse_b", ValueError, lambda a, la, b, lb: (a, la, b, lb.to("meta"))),
])
def test_bad_input_names_the_argument(name, exc, args):
    states, _, _ = halves(5, 3, 64, 2, 2)
    with pytest.raises(exc, match=f"'{name}'"):
        rpo_kernels.merge_attention_states(*args(*states))

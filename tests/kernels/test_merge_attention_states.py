"""The exact log-sum-exp merge inside shared-prefix attention (``rpo_kernels.reference.merge_attention_states`` and
the Triton ``merge_states``): merging the partial attentions over two halves of a key set gives the full attention."""

from __future__ import annotations

import pytest
import torch

from rpo_kernels._dispatch import backend_status
from rpo_kernels.reference.merge_attention_states import merge_attention_states_ref
from tests.helpers.kernel_cases import halves
from tests.helpers.rules import assert_within_rule, max_abs_err


def merge(backend: str, out_a, lse_a, out_b, lse_b):
    """(out in out_a's dtype, lse fp32) of the merge on ``backend``."""
    if backend == "reference":
        return merge_attention_states_ref(out_a, lse_a, out_b, lse_b)
    ok, why = backend_status("triton", out_a.device)
    if not ok:
        pytest.skip(f"the Triton merge cannot run here: {why}")
    from rpo_kernels.triton.merge_attention_states import merge_states

    return merge_states(out_a[None], lse_a[None], out_b, lse_b, out_a.dtype)


BOTH = ("reference", "triton")


@pytest.mark.parametrize("backend", BOTH)
@pytest.mark.parametrize("n,h,d,la,lb", [(7, 3, 64, 5, 11), (33, 8, 128, 1, 40), (5, 2, 80, 0, 9), (4, 4, 64, 6, 0)])
def test_merged_halves_equal_full_attention(backend, n, h, d, la, lb):
    states, full, lse_full = halves(n, h, d, la, lb)
    out, lse = merge(backend, *states)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    assert max_abs_err(out, full) < 1e-5 and max_abs_err(lse, lse_full) < 1e-5


@pytest.mark.parametrize("backend", BOTH)
@pytest.mark.parametrize("dtype,atol", [(torch.bfloat16, 2e-3), (torch.float16, 1e-3)])
def test_low_precision_within_rule(backend, dtype, atol):
    states, full, _ = halves(19, 4, 64, 13, 6, dtype)
    out, _ = merge(backend, *states)
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
    out, lse = merge(backend, out_a, lse_a, out_b, lse_b)
    assert bool((out[2] == 0).all()) and bool(torch.isneginf(lse[2]).all())
    want, want_lse = merge_attention_states_ref(out_a.contiguous(), lse_a.contiguous(), out_b, lse_b)
    assert max_abs_err(out, want) < 1e-6 and max_abs_err(lse[:2], want_lse[:2]) < 1e-6

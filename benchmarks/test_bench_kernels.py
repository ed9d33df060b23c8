"""pytest-benchmark cases of the kernels: the fused policy loss against the unfused one, ``token_logprobs``, and one
shared-prefix decode step (packed, in lanes, on duplicated KV), every provider the table scripts compare.

The cases are ``benchmarks.cases.loss`` and ``benchmarks.cases.attention``'s, the ones ``bench_policy_loss.py`` and
``bench_attention.py`` measure; devices, sizes and timing: ``benchmarks/conftest.py``. Run with
``pytest benchmarks --benchmark-only``.
"""

from __future__ import annotations

import pytest

from .cases import Case, attention, loss


def _loss_cases(device: str, size: str, providers: tuple[str, ...]) -> list[Case]:
    """Every provider at every shape of ``size``; Triton on a CPU only at the tiny shape (the interpreter)."""
    cases = []
    for key in loss.shape_keys(size, device):
        n, h, v = loss.SHAPES[key]
        for name in providers:
            skip = loss.provider_reason(name, device, interpreted=key == "tiny")
            cases.append(Case(f"N{n}-H{h}-V{v}-{name}", device, name, key, skip))
    return cases


def policy_loss_cases(device: str, size: str) -> list[Case]:
    return _loss_cases(device, size, loss.LOSS_PROVIDERS)


def token_logprobs_cases(device: str, size: str) -> list[Case]:
    return _loss_cases(device, size, loss.LOGPROB_PROVIDERS)


def decode_cases(device: str, size: str) -> list[Case]:
    """Every provider at every (P, G, S) of ``size``'s grids; the GPU-only providers only on a GPU, Triton on a CPU
    only at the tiny grid (the interpreter)."""
    names = [n for n in attention.PROVIDERS if device == "cuda" or n not in attention.GPU_ONLY]
    cases = []
    for grid, b in attention.grids(size, device):
        for p, g, s in attention.shapes(grid):
            for name in names:
                skip = attention.provider_reason(name, device, interpreted=grid is attention.TINY)
                cases.append(Case(f"B{b}-P{p}-G{g}-S{s}-{name}", device, name, (b, p, g, s), skip))
    return cases


@pytest.mark.bench_cases.with_args(policy_loss_cases)
def test_policy_loss(bench, case):
    """Forward + backward of the clipped-ratio policy loss from hidden states and the lm_head."""
    step, label = loss.loss_step(case.provider, case.shape, case.device)
    bench("fused_linear_policy_loss", case, step, label)


@pytest.mark.bench_cases.with_args(token_logprobs_cases)
def test_token_logprobs(bench, case):
    """Log-probabilities of the target tokens under the lm_head, without gradients."""
    call, label = loss.logprobs_call(case.provider, case.shape, case.device)
    bench("token_logprobs", case, call, label)


@pytest.mark.bench_cases.with_args(decode_cases)
def test_decode_attention(bench, case):
    """One decode step of B groups x G sequences over a P-token shared prefix and S-token suffixes."""
    b, p, g, s = case.shape
    call, label, _, _ = attention.decode_call(case.provider, (p, g, s), b, case.device)
    bench("attention_decode", case, call, label)

"""pytest-benchmark cases of the engines: rollouts on the full path vs RPO's suffixes per engine (native, HF
generate, vLLM when installed), and the training forward (plain per-sample vs prefix-once), on random Qwen2 models
built here (no download).

The cases are ``benchmarks.cases.engine``'s, the ones ``bench_rollout.py`` and ``bench_policy_forward.py`` measure;
devices, sizes and timing: ``benchmarks/conftest.py``. Run with ``pytest benchmarks --benchmark-only``.
"""

from __future__ import annotations

import pytest
import torch

from .cases import Case, bench_dtype, dtype_name, engine
from .models import ARCHS


def rollout_cases(device: str, size: str) -> list[Case]:
    """Every engine on both paths at ``size``'s rollout shape."""
    arch, shape = engine.rollout_case(size, device)
    desc = "-".join(f"{k}{v}" for k, v in shape.items())
    return [Case(f"{arch}-{desc}-{name}-{mode}", device, f"{name}-{mode}", (arch, shape), engine.engine_reason(name))
            for name in engine.ENGINES for mode in engine.MODES]


def forward_cases(device: str, size: str) -> list[Case]:
    """Both training forwards at ``size``'s (P, S, G) shapes."""
    arch, shapes = engine.forward_cases(size, device)
    return [Case(f"{arch}-P{p}-S{s}-G{g}-{name}", device, name, (arch, (p, s, g)))
            for p, s, g in shapes for name in engine.FORWARD_PROVIDERS]


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """get(name, arch, shape, device) -> the engine, loaded once per module from one random checkpoint per arch."""
    checkpoints, built = {}, {}

    def get(name: str, arch: str, shape: dict, device: str):
        max_len = shape["P"] + shape["C"] + 8
        if (arch, max_len) not in checkpoints:
            checkpoints[(arch, max_len)] = engine.random_checkpoint(tmp_path_factory.mktemp(arch), arch, max_len)
        key = (name, arch, max_len, device)
        if key not in built:
            built[key] = engine.make_engines(checkpoints[(arch, max_len)], device, bench_dtype(device), [name])[name]
        return built[key]

    yield get
    built.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@pytest.mark.bench_cases.with_args(rollout_cases)
def test_rollout(bench, engines, case):
    """One rollout of the workload: G samples of B prompts, C new tokens (full) or each group's suffix (rpo)."""
    arch, shape = case.shape
    name, mode = case.provider.split("-")
    w = engine.workload(**shape, vocab=ARCHS[arch]["vocab_size"])
    call = engine.rollout_call(name, engines(name, arch, shape, case.device), w, mode)
    label = " ".join(f"{k}={v}" for k, v in shape.items()) + f" {arch} {dtype_name(bench_dtype(case.device))}"
    bench("rollout", case, call, label)


@pytest.mark.bench_cases.with_args(forward_cases)
def test_policy_forward(bench, case):
    """Forward + backward of the policy loss over one RPO group (context P, G suffixes of S tokens)."""
    arch, shape = case.shape
    step, label = engine.forward_step(case.provider, arch, shape, case.device)
    bench("policy_forward", case, step, label)

"""Benchmark cases: the shapes, inputs and providers of every benchmark, defined once.

The side-by-side table scripts (``benchmarks/bench_*.py``) and the pytest-benchmark tests
(``benchmarks/test_bench_*.py``) both build their workloads from here: ``loss`` (fused policy loss, token_logprobs),
``attention`` (shared-prefix and lane decode) and ``engine`` (rollout engines, the training forward). Importing these
modules touches no device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rpo_kernels._dispatch import backend_status

INTERPRETER_ONLY = "Triton on a CPU runs through its interpreter (TRITON_INTERPRET=1), too slow for this shape"


def bench_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype every benchmark measures in: bf16 on a GPU, fp32 on a CPU."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def backend_reason(backend: str, device: torch.device | str, *, interpreted: bool = False) -> str | None:
    """None when ``rpo_kernels`` can run ``backend`` on ``device``, else why not. Triton on a CPU counts only where
    the caller allows the interpreter (``interpreted``: tiny shapes) and TRITON_INTERPRET=1 was set before triton was
    imported."""
    device = torch.device(device)
    if backend == "triton" and device.type == "cpu" and not interpreted:
        return INTERPRETER_ONLY
    ok, why = backend_status(backend, device)
    return None if ok else why


@dataclass(frozen=True)
class Case:
    """One case of the pytest benchmarks: ``provider`` at ``shape`` (a key the case's builder takes) on ``device``.

    ``name`` is its test id (shape and provider); ``skip`` says why it cannot run here, None when it can.
    """

    name: str
    device: str
    provider: str
    shape: object
    skip: str | None = None

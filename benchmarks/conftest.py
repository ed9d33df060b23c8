"""pytest-benchmark set-up of the benchmarks: which devices and sizes run, and how one case is timed.

``pytest benchmarks --benchmark-only`` times every case of ``benchmarks/test_bench_*.py`` (add
``--benchmark-autosave`` to keep the run, ``--benchmark-compare`` to compare with the last one kept). The project's
test command (``pytest`` from the root) does not collect them: pyproject's ``testpaths`` is ``tests``.

- ``--bench-device all|cpu|cuda`` (default ``$RPO_BENCH_DEVICE`` or all): the cuda cases skip, with the reason, when
  torch.cuda.is_available() is False. CUDA is first asked at collection, never at import.
- ``--bench-size auto|smoke|quick|full`` (default ``$RPO_BENCH_SIZE`` or auto: quick on a CPU, full on a GPU):
  smoke is one tiny shape per benchmark (seconds; the GPU suite's dry run), quick the scripts' ``--quick`` shapes and
  the tiny ones, full the scripts' shapes on a CPU and the GPU suite's on a GPU.
- ``--bench-threads N`` (default ``$RPO_BENCH_THREADS`` or 1; 0 keeps torch's default): torch's CPU threads. One
  thread keeps the figures steady on a shared machine (threads that wait on each other amplify every preemption), as
  in most of the docs' CPU tables (the scripts' ``--threads 1``).
- Triton runs on a CPU only through its interpreter: set TRITON_INTERPRET=1 in the environment of the pytest command
  (before triton is imported); even then only the tiny shapes run it. Without it the Triton cases skip on a CPU.
- A test marked ``bench_cases.with_args(make)`` is parametrised with the ``Case``s of ``make(device, size)`` for
  each device. The ``bench`` fixture times one: the first call warms up and gives its peak memory
  (``harness.peak_memory_mb``, as ``harness.measure`` does; on a CPU it is this process's, so it undercounts what the
  scripts' isolated runs show), then pytest-benchmark times ``harness.synced`` calls (the call and a wait for the
  device, as the scripts time them).
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

from .harness import device_name, peak_memory_mb, synced, versions

DEVICES = ("cpu", "cuda")
SIZES = ("auto", "smoke", "quick", "full")


def pytest_addoption(parser):
    group = parser.getgroup("rpo benchmarks")
    group.addoption("--bench-device", choices=("all", *DEVICES), default=os.environ.get("RPO_BENCH_DEVICE", "all"),
                    help="devices the benchmarks run on (default $RPO_BENCH_DEVICE or all)")
    group.addoption("--bench-size", choices=SIZES, default=os.environ.get("RPO_BENCH_SIZE", "auto"),
                    help="shapes: smoke, quick, full, or auto = quick on a CPU and full on a GPU (default "
                         "$RPO_BENCH_SIZE or auto)")
    group.addoption("--bench-threads", type=int, default=int(os.environ.get("RPO_BENCH_THREADS", "1")),
                    help="torch CPU threads (default $RPO_BENCH_THREADS or 1; 0: torch's default)")


def pytest_configure(config):
    for option, choices in (("--bench-device", ("all", *DEVICES)), ("--bench-size", SIZES)):
        if config.getoption(option) not in choices:  # a default from the environment is not checked by argparse
            raise pytest.UsageError(f"{option}: expected one of {', '.join(choices)}, got "
                                    f"{config.getoption(option)!r}")
    config.addinivalue_line("markers", "bench_cases(make): parametrise 'case' with make(device, size) per device")


@functools.cache
def _cuda_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA GPU; torch.cuda.is_available() is False on this machine"
    return None


def pytest_generate_tests(metafunc):
    marker = metafunc.definition.get_closest_marker("bench_cases")
    if marker is None:
        return
    chosen = metafunc.config.getoption("--bench-device")
    size = metafunc.config.getoption("--bench-size")
    params = []
    for device in DEVICES if chosen == "all" else (chosen,):
        reason = _cuda_reason() if device == "cuda" else None
        if reason is not None:
            params.append(pytest.param(None, id=device, marks=pytest.mark.skip(reason=reason)))
            continue
        device_size = size if size != "auto" else ("full" if device == "cuda" else "quick")
        for case in marker.args[0](device, device_size):
            marks = [pytest.mark.skip(reason=case.skip)] if case.skip else []
            params.append(pytest.param(case, id=f"{device}-{device_size}-{case.name}", marks=marks))
    metafunc.parametrize("case", params)


@pytest.fixture(scope="session", autouse=True)
def _threads(pytestconfig):
    """torch's CPU threads for the run (``--bench-threads``), restored after it."""
    before, wanted = torch.get_num_threads(), pytestconfig.getoption("--bench-threads")
    if wanted > 0:
        torch.set_num_threads(wanted)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def bench(benchmark):
    """bench(op, case, fn, label): time ``fn`` (one call of ``case``'s workload, ``label`` its shape) with
    pytest-benchmark, grouped by op, shape and device so that the providers of one workload sit side by side."""

    def run(op: str, case, fn, label: str) -> None:
        call = synced(fn, case.device)
        peak = peak_memory_mb(call, case.device)
        benchmark.group = f"{op} {label} {case.device}"
        benchmark.extra_info.update(op=op, provider=case.provider, shape=label, device=device_name(case.device),
                                    version=versions(), threads=torch.get_num_threads(), peak_mem_mb=round(peak, 1))
        benchmark(call)

    return run

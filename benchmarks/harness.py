"""Shared benchmark harness: timing (median and spread), peak memory, result rows kept as CSV data.

Rows (``benchmarks.rows``: ``op, provider, shape, metric, value, device, version, date``) are appended to
``benchmarks/results/<file>.csv`` with an atomic replace and the plot redrawn (``record``). Peak memory is the extra
memory a call needs beyond what was allocated before it: ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the
process's resident high-water mark (VmHWM, reset through /proc/self/clear_refs) minus the resident size before the
call.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .plot import plot as draw
from .rows import append_rows

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Measurement:
    median_ms: float
    p20_ms: float
    p80_ms: float
    peak_mem_mb: float


def device_name(device: torch.device | str) -> str:
    """The card's name on a GPU; the CPU model and core count on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


def versions() -> str:
    import rpo_kernels

    parts = [f"rpo {rpo_kernels.__version__}", f"torch {torch.__version__}"]
    try:
        import triton

        parts.append(f"triton {triton.__version__}")
    except ImportError:
        pass
    return "; ".join(parts)


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory_mb(fn: Callable[[], object], device: torch.device | str) -> float:
    """Extra memory (MiB) one call of ``fn`` needs at its peak, beyond what is allocated before it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident set size (VmHWM) to the current one
    before = _proc_status_kb("VmRSS")
    fn()
    return (_proc_status_kb("VmHWM") - before) / 1024


def device_sync(device: torch.device | str) -> Callable[[], None]:
    """A call that waits for the work queued on ``device`` (a no-op on a CPU): every timed call ends with it."""
    device = torch.device(device)
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def synced(fn: Callable[[], object], device: torch.device | str) -> Callable[[], None]:
    """``fn`` then a wait for the device: what one timed call of ``measure`` covers (the pytest benchmarks time
    this)."""
    sync = device_sync(device)

    def call() -> None:
        fn()
        sync()

    return call


def measure(fn: Callable[[], object], device: torch.device | str, *, warmup: int = 1, rep: int = 5) -> Measurement:
    """Peak memory of the first call, then ``warmup`` more calls, then median/p20/p80 wall time (ms) of ``rep``.

    The first call is measured for memory because on a CPU the allocator keeps freed pages: later calls reuse them
    without growing the resident set. Run each provider in its own process (``run_isolated``) for exact figures.
    """
    sync, call = device_sync(device), synced(fn, device)
    peak = peak_memory_mb(fn, device)
    for _ in range(warmup - 1):
        fn()
    sync()
    times = []
    for _ in range(rep):
        sync()
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    q = statistics.quantiles(times, n=5) if len(times) > 1 else [times[0]] * 4
    return Measurement(statistics.median(times), q[0], q[3], peak)


def measure_interleaved(fns: dict[str, Callable[[], object]], device: torch.device | str, *, warmup: int = 1,
                        rep: int = 5) -> dict[str, Measurement]:
    """``measure`` for several providers of one workload, their timed calls taken in turn (a, b, a, b, ...).

    A ratio between providers then sees the same machine: on a shared or throttling host a slow spell lands on all
    of them instead of on whichever ran during it. Peak memory is each provider's first call, as in ``measure``.
    """
    sync, calls = device_sync(device), {name: synced(fn, device) for name, fn in fns.items()}
    peaks = {name: peak_memory_mb(fn, device) for name, fn in fns.items()}
    for _ in range(warmup - 1):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rep):
        for name, call in calls.items():
            sync()
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    out = {}
    for name, t in times.items():
        t.sort()
        q = statistics.quantiles(t, n=5) if len(t) > 1 else [t[0]] * 4
        out[name] = Measurement(statistics.median(t), q[0], q[3], peaks[name])
    return out


def copy_bandwidth_gbps(device: torch.device | str, mib: int = 1024, rep: int = 10) -> float:
    """The device's measured memory bandwidth (GB/s): a copy of ``mib`` MiB, bytes read + written, median of ``rep``.

    The ceiling that memory-bound kernels are judged against (on a GPU the buffer is many times the L2 cache).
    """
    src = torch.ones(mib * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    m = measure(lambda: dst.copy_(src), device, warmup=2, rep=rep)
    return 2 * src.numel() / (m.median_ms * 1e-3) / 1e9


def rows_for(op: str, provider: str, shape: str, m: Measurement, device: torch.device | str) -> list[dict]:
    stamp = {"device": device_name(device), "version": versions(),
             "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    metrics = {"time_ms_median": m.median_ms, "time_ms_p20": m.p20_ms, "time_ms_p80": m.p80_ms,
               "peak_mem_mb": m.peak_mem_mb}
    return [{"op": op, "provider": provider, "shape": shape, "metric": k, "value": f"{v:.6g}", **stamp}
            for k, v in metrics.items()]


def record(rows: list[dict], out: str | os.PathLike, *, plot: bool = True) -> Path:
    """Append ``rows`` to the CSV ``out`` (atomically) and redraw its plot beside it; returns the CSV path."""
    path = append_rows(out, rows)
    print(f"rows appended to {path}")
    if plot:
        print(f"plot: {draw(path)}")
    return path


ROWS_MARK = "BENCH_ROWS_JSON:"


def emit_rows(rows: list[dict]) -> None:
    """Child side of ``run_isolated``: hand result rows to the parent on stdout."""
    print(ROWS_MARK + json.dumps(rows), flush=True)


def run_isolated(module: str, argv: list[str], timeout: float = 3600) -> list[dict]:
    """Run ``python -m module *argv`` in a fresh process (exact peak memory per provider); returns its rows.

    The child's other output is passed through; a failing child raises with its stderr.
    """
    proc = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=timeout)
    rows = []
    for line in proc.stdout.splitlines():
        if line.startswith(ROWS_MARK):
            rows += json.loads(line[len(ROWS_MARK):])
        else:
            print(line, flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {module} {' '.join(argv)} failed:\n{proc.stderr[-4000:]}")
    return rows


def run_jobs(module: str, argv: list[str], jobs: list[list[str]], device: torch.device | str,
             in_process: Callable[[list[str]], list[dict]], *, isolate: bool | None = None,
             timeout: float = 3600) -> tuple[list[dict], list[str]]:
    """Rows of every job (each a list of extra child arguments), and one line per job that failed.

    By default (``isolate`` None) on a CPU each job runs in a fresh process (``run_isolated``): the resident
    high-water mark is per process. On a GPU the jobs run in this process one after another (``in_process(job)``):
    CUDA's peak counters are reset for each measurement, so the figures are exact without a new process, and CUDA
    starts once. A failing job is reported with its traceback and skipped, so one broken provider does not lose the
    others' rows.
    """
    rows, failed = [], []
    on_gpu = torch.device(device).type == "cuda"
    isolate = not on_gpu if isolate is None else isolate
    for job in jobs:
        try:
            rows += run_isolated(module, [*argv, *job], timeout) if isolate else in_process(job)
        except Exception as exc:  # noqa: BLE001 - reported, and the run ends with a failure status in finish()
            traceback.print_exc()
            failed.append(f"{' '.join(job)}: {type(exc).__name__}: {str(exc).strip()[-1500:]}")
        finally:
            if on_gpu:
                torch.cuda.empty_cache()
    return rows, failed


def finish(rows: list[dict], failed: list[str], out: str | os.PathLike, *, plot: bool = True) -> None:
    """Record the rows that were measured; then, if any job failed, exit with status 1 naming each failure."""
    if rows:
        record(rows, out, plot=plot)
    if failed:
        raise SystemExit(f"{len(failed)} benchmark job(s) failed:\n" + "\n".join(failed))

"""Benchmark of the fused clipped-ratio policy loss: forward + backward time and peak memory per provider.

Providers, side by side in one run on one device (on a CPU each in its own process): naive, reference, triton (GPU
only) and liger (when installed), as ``benchmarks.cases.loss`` defines them with the shapes and inputs (the pytest
benchmarks, ``benchmarks/test_bench_kernels.py``, measure the same cases).

``python -m benchmarks.bench_policy_loss`` runs (N, H, V) = (4096, 1024, 151936) fp32 on a CPU and
(8192, 2048, 151936) bf16 on a GPU; ``--quick`` a small shape (the quickstart demo). Rows go to
benchmarks/results/policy_loss.csv, the plot beside it, and a table with the ratios to naive is printed.
"""

from __future__ import annotations

import argparse
import sys

import torch

from rpo_train.runtime.errors import ArgumentParser, report_usage_errors

from .cases.loss import loss_providers, loss_step
from .harness import RESULTS_DIR, device_name, emit_rows, finish, measure, rows_for, run_jobs


def run_provider(name: str, shape_key: str, device: str, rep: int) -> list[dict]:
    """Measure one provider in this process (the parent runs each provider in its own process)."""
    step, shape = loss_step(name, shape_key, device)
    m = measure(step, device, warmup=1, rep=rep)
    print(f"  {name:10s} {m.median_ms:10.1f} ms  (p20 {m.p20_ms:.1f}, p80 {m.p80_ms:.1f})  "
          f"peak +{m.peak_mem_mb:9.1f} MiB", flush=True)
    return rows_for("fused_linear_policy_loss", name, shape, m, device)


def print_table(rows: list[dict]) -> None:
    """Markdown table of time and peak memory with ratios to the naive provider."""
    value = {(r["provider"], r["metric"]): float(r["value"]) for r in rows}
    names = list(dict.fromkeys(r["provider"] for r in rows))
    if "naive" not in names:
        return
    t0, m0 = value[("naive", "time_ms_median")], value[("naive", "peak_mem_mb")]
    print(f"\n{rows[0]['shape']} on {rows[0]['device']} (fwd+bwd; ratios to naive)")
    print("| provider | time ms | x naive time | peak MiB | x naive memory |\n|---|---|---|---|---|")
    for name in names:
        t, m = value[(name, "time_ms_median")], value[(name, "peak_mem_mb")]
        print(f"| {name} | {t:.1f} | {t / t0:.2f} | {m:.0f} | {m / max(m0, 1e-9):.3f} |")


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shape (N=512, H=256, V=32000)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rep", type=int, default=3)
    parser.add_argument("--providers", nargs="*", help="subset of naive, reference, triton, liger")
    parser.add_argument("--out", default=str(RESULTS_DIR / "policy_loss.csv"))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    key = "quick" if args.quick else args.device
    if args.child:
        emit_rows(run_provider(args.child, key, args.device, args.rep))
        return
    print(f"fused_linear_policy_loss fwd+bwd on {device_name(args.device)} (on a CPU one process per provider)",
          flush=True)
    child_argv = list(sys.argv[1:] if argv is None else argv)
    jobs = [["--child", name] for name in loss_providers(args.device) if not args.providers or name in args.providers]
    rows, failed = run_jobs(__spec__.name, child_argv, jobs, args.device,
                            lambda job: run_provider(job[1], key, args.device, args.rep))
    if rows:
        print_table(rows)
    finish(rows, failed, args.out, plot=not args.no_plot)


if __name__ == "__main__":
    sys.exit(report_usage_errors("benchmarks.bench_policy_loss", lambda: main() or 0))

"""Benchmark of the training forward: plain per-sample forward vs prefix-once, forward + backward of the policy loss.

One RPO group: G samples share a context of P tokens (prompt + kept prefix) and have their own S-token suffixes; the
loss covers the full response (``loss_tokens: full``, DAPO aggregation). Providers, side by side in one run (on a CPU
each in its own process, for exact peak memory):
  plain        ``rpo_train.model.policy`` on a right-padded batch: the context is computed G times
  prefix_once  ``rpo_train.model.prefix_forward``: the context once, the suffixes against its one KV

The cases are ``benchmarks.cases.engine``'s (the pytest benchmarks, ``benchmarks/test_bench_engine.py``, measure
the same). Models are random (no download, ``benchmarks.models``): ``tiny`` (Qwen2, hidden 256, 4 layers, 8/2 heads,
vocab 4096) and ``qwen2-0.5b`` (the Qwen2.5-0.5B shape); fp32 on a CPU, bf16 on a GPU. Rows go to
benchmarks/results/policy_forward.csv with a plot.

    python -m benchmarks.bench_policy_forward                      # CPU, (P, S, G) of the issue, tiny model
    python -m benchmarks.bench_policy_forward --arch qwen2-0.5b    # on a GPU
"""

from __future__ import annotations

import argparse
import sys

import torch

from rpo_train.runtime.errors import ArgumentParser, report_usage_errors

from .cases.engine import FORWARD_ARCHS, FORWARD_PROVIDERS, FORWARD_SHAPES, forward_step
from .harness import RESULTS_DIR, device_name, emit_rows, finish, measure, rows_for, run_jobs


def run_provider(name: str, arch: str, shape: tuple[int, int, int], device: str, rep: int,
                 checkpoint_layers: bool) -> list[dict]:
    """Measure one provider on one shape in this process (the parent runs each in its own process)."""
    step, label = forward_step(name, arch, shape, device, checkpoint_layers)
    m = measure(step, device, warmup=1, rep=rep)
    print(f"  {label:40s} {name:12s} {m.median_ms:10.1f} ms  peak +{m.peak_mem_mb:8.1f} MiB", flush=True)
    return rows_for("policy_forward", name, label, m, device)


def print_table(rows: list[dict]) -> None:
    value = {(r["shape"], r["provider"], r["metric"]): float(r["value"]) for r in rows}
    print("| shape | plain ms | prefix-once ms | x plain time | plain MiB | prefix-once MiB | x plain memory |\n"
          "|---|---|---|---|---|---|---|")
    for shape in dict.fromkeys(r["shape"] for r in rows):
        try:
            t0, t1 = value[(shape, "plain", "time_ms_median")], value[(shape, "prefix_once", "time_ms_median")]
            m0, m1 = value[(shape, "plain", "peak_mem_mb")], value[(shape, "prefix_once", "peak_mem_mb")]
        except KeyError:
            continue
        print(f"| {shape} | {t0:.0f} | {t1:.0f} | {t1 / t0:.3f} | {m0:.0f} | {m1:.0f} | {m1 / max(m0, 1e-9):.3f} |")


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tiny", choices=FORWARD_ARCHS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="*", default=[",".join(map(str, s)) for s in FORWARD_SHAPES],
                        help="P,S,G triples")
    parser.add_argument("--rep", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads on a CPU (0: default)")
    parser.add_argument("--checkpoint-layers", action="store_true", help="recompute decoder layers in the backward")
    parser.add_argument("--out", default=str(RESULTS_DIR / "policy_forward.csv"))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 3 or min(s) < 1 for s in shapes):
        parser.error(f"--shapes: expected P,S,G triples of positive ints, got {args.shapes}")

    def child(job: str) -> list[dict]:
        name, index = job.split(":")
        return run_provider(name, args.arch, shapes[int(index)], args.device, args.rep, args.checkpoint_layers)

    if args.child:
        emit_rows(child(args.child))
        return
    print(f"policy forward + backward on {device_name(args.device)} (on a CPU one process per provider and shape)",
          flush=True)
    child_argv = list(sys.argv[1:] if argv is None else argv)
    jobs = [["--child", f"{name}:{i}"] for i in range(len(shapes)) for name in FORWARD_PROVIDERS]
    rows, failed = run_jobs(__spec__.name, child_argv, jobs, args.device, lambda job: child(job[1]))
    if rows:
        print_table(rows)
    finish(rows, failed, args.out, plot=not args.no_plot)


if __name__ == "__main__":
    sys.exit(report_usage_errors("benchmarks.bench_policy_forward", lambda: main() or 0))

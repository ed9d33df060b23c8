"""What RPO costs in exploration: pass@k and mean@k of RPO against the full path, on the default recipe.

Each arm is ``rpo-train`` on the default recipe (60 steps, the bundled recurrence task) with ``eval_samples=k`` and
evaluation before and after only, one process per run (``--threads`` each, two runs side by side on a 2-core CPU);
``objective.algorithm`` is grpo or dapo, ``objective.mode`` rpo or full. Rows (one per run: accuracy, pass@k and
mean@k before and after, tokens per sample) go to ``benchmarks/results/pass_at_k/runs.json``; the table is printed.

    python -m benchmarks.pass_at_k --algorithms grpo dapo --seeds 11 12 --work /tmp/passk
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rpo_train.runtime.atomic import atomic_write
from rpo_train.runtime.errors import ArgumentParser, report_usage_errors

from .harness import RESULTS_DIR

KEYS = ("accuracy_before", "accuracy_after", "pass_at_k_before", "pass_at_k_after", "mean_at_k_before",
        "mean_at_k_after", "tokens_per_sample")


def run(name: str, algorithm: str, mode: str, seed: int, k: int, work: Path, threads: int) -> dict:
    """One rpo-train run (reused when it finished; an unfinished one resumes): the row of ``KEYS``."""
    out = work / name
    done = (out / "summary.json").is_file() and "accuracy_after" in json.loads((out / "summary.json").read_text())
    if not done:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, "-m", "rpo_train.cli", f"out_dir={out}", f"seed={seed}", f"eval_samples={k}",
               "eval_every=60", f"objective.algorithm={algorithm}", f"objective.mode={mode}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"run": name, "algorithm": algorithm, "mode": mode, "seed": seed, "k": k,
            **{key: summary[key] for key in KEYS}}


def table(rows: list[dict]) -> str:
    lines = ["| algorithm | mode | seeds | accuracy after | pass@k before -> after | mean@k after | tokens / sample |",
             "|---|---|---|---|---|---|---|"]
    for algorithm in sorted({r["algorithm"] for r in rows}):
        for mode in ("full", "rpo"):
            arm = [r for r in rows if r["algorithm"] == algorithm and r["mode"] == mode]
            if not arm:
                continue

            def mean(key, arm=arm):
                return 100 * statistics.mean(r[key] for r in arm)

            lines.append(f"| {algorithm} | {mode} | {len(arm)} | {mean('accuracy_after'):.1f} | "
                         f"{mean('pass_at_k_before'):.1f} -> {mean('pass_at_k_after'):.1f} | "
                         f"{mean('mean_at_k_after'):.1f} | {mean('tokens_per_sample') / 100:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithms", nargs="*", default=["grpo"], choices=["grpo", "dapo"])
    parser.add_argument("--seeds", nargs="*", type=int, default=[11])
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="runs/pass_at_k", help="where the run folders go")
    parser.add_argument("--out", default=str(RESULTS_DIR / "pass_at_k" / "runs.json"))
    args = parser.parse_args(argv)
    work = Path(args.work)
    jobs = [(f"{a}_{m}_s{s}" if a != "grpo" else f"{m}_s{s}", a, m, s) for a in args.algorithms
            for s in args.seeds for m in ("rpo", "full")]
    with ThreadPoolExecutor(2) as pool:  # two runs side by side
        rows = list(pool.map(lambda j: run(*j, args.k, work, args.threads), jobs))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=1)))
    print(table(rows))


if __name__ == "__main__":
    sys.exit(report_usage_errors("benchmarks.pass_at_k", lambda: main() or 0))

"""Training comparison in miniature (paper Tables 1-3): GRPO vs GRPO+RPO vs DAPO vs DAPO+RPO on the embedded task.

Every run starts from the same warm-started tiny model, data and budget (recipe ``tiny-cpu`` plus overrides) and is
its own ``rpo-train`` process. Three studies:

- ``grid``: the four arms x length-aware reward on/off x seeds;
- ``truncation``: RPO-GRPO with L fixed at 8, 16 and 32 tokens and L = 0.5*l and l (paper Table 2, Fig. 6; the
  grid's RPO arms use the recipe's L = 80, longer than the task's responses);
- ``loss_tokens``: RPO-GRPO with ``loss_tokens: suffix`` (the grid's RPO arms use ``full``, the paper's choice).

Each finished run appends its summary rows to ``benchmarks/results/training.csv`` at once and keeps its per-step
health curves as ``benchmarks/results/training_runs/<run>.jsonl``, so an interrupted study loses nothing; runs whose
curves already exist are skipped (``--redo`` runs them again; a run whose checkpoint in ``--work`` is complete only
re-evaluates and re-records). ``python -m benchmarks.training_report`` turns the data
into the tables (mean and spread over seeds, RPO/full ratios) and plots.

    python -m benchmarks.bench_training --study grid --seeds 0 1 2 --threads 1
    python -m benchmarks.bench_training --study truncation --seeds 0
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from rpo_train.errors import ArgumentParser, report_usage_errors

from .harness import RESULTS_DIR, device_name, record, versions

ARMS = {"grpo": ("grpo", "full"), "grpo+rpo": ("grpo", "rpo"), "dapo": ("dapo", "full"), "dapo+rpo": ("dapo", "rpo")}
CURVE_KEYS = ("eval/accuracy", "reward/mean", "rollout/response_len", "rollout/suffix_len", "rollout/prefix_len",
              "rollout/zero_variance_share", "rollout/generated_tokens", "rollout/groups", "cache/mean_length",
              "cache/correct_share", "time/rollout_s", "time/train_s", "time/step_s")
SUMMARY_KEYS = ("accuracy_before", "accuracy_after", "tokens_per_sample", "tokens_generated", "rollout_s", "train_s",
                "cache_init_s", "total_s", "step_s")
TRUNCATION_SWEEP = ({"truncation.mode": "fixed", "truncation.max_cut": 8},
                    {"truncation.mode": "fixed", "truncation.max_cut": 16},
                    {"truncation.mode": "fixed", "truncation.max_cut": 32},
                    {"truncation.mode": "dynamic", "truncation.factor": 0.5},
                    {"truncation.mode": "dynamic", "truncation.factor": 1.0})


def run_name(arm: str, seed: int, length_aware: bool, extra: dict) -> str:
    """A stable, file-safe name of one run: arm, length-aware flag, seed and the extra overrides."""
    parts = [arm.replace("+", "_"), f"la{int(length_aware)}", f"seed{seed}"]
    parts += [f"{k.split('.')[-1]}-{v}" for k, v in sorted(extra.items())]
    return "_".join(parts)


def plan(study: str, arms: list[str], seeds: list[int], length_aware: str) -> list[tuple[str, int, bool, dict]]:
    """The runs of a study as (arm, seed, length_aware, extra overrides)."""
    flags = {"on": [True], "off": [False], "both": [True, False]}[length_aware]
    if study == "grid":
        return [(a, s, la, {}) for s in seeds for la in flags for a in arms]
    if study == "truncation":
        return [("grpo+rpo", s, la, dict(t)) for s in seeds for la in flags for t in TRUNCATION_SWEEP]
    if study == "loss_tokens":
        return [("grpo+rpo", s, la, {"objective.loss_tokens": "suffix"}) for la in flags for s in seeds]
    raise ValueError(f"--study must be grid, truncation or loss_tokens, got {study!r}")


def run_one(arm: str, seed: int, length_aware: bool, extra: dict, steps: int, work: Path, threads: int) -> dict:
    """Train one run in its own process (resumed when ``work`` already holds its checkpoint); its summary + curve."""
    algorithm, rollout = ARMS[arm]
    name = run_name(arm, seed, length_aware, extra)
    out = work / name
    cmd = [sys.executable, "-m", "rpo_train.cli", f"out_dir={out}", f"seed={seed}", f"steps={steps}",
           f"objective.algorithm={algorithm}", f"objective.rollout={rollout}",
           f"objective.length_aware={str(length_aware).lower()}", *(f"{k}={v}" for k, v in extra.items())]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else dict(os.environ)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"run {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    gen = [r for r in rows if "rollout/suffix_len" in r]
    summary["tokens_per_sample"] = sum(r["rollout/suffix_len"] for r in gen) / max(len(gen), 1)
    summary["total_s"] = summary["cache_init_s"] + summary["rollout_s"] + summary["train_s"]
    summary["step_s"] = (summary["rollout_s"] + summary["train_s"]) / max(summary["steps"], 1)
    curve = [{"step": r["step"], **{k: r[k] for k in CURVE_KEYS if k in r}} for r in rows]
    return {"name": name, "summary": summary, "curve": curve}


def save_run(result: dict, arm: str, seed: int, length_aware: bool, extra: dict, steps: int, csv_path: Path,
             runs_dir: Path) -> None:
    """Append the run's summary rows to the CSV and write its curve (both atomically)."""
    from rpo_train.atomic import atomic_write

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    stamp = {"device": device_name("cpu"), "version": versions(), "date": now}
    overrides = " ".join(f"{k}={v}" for k, v in sorted(extra.items()))
    shape = f"tiny-cpu steps={steps} length_aware={int(length_aware)} seed={seed} {overrides}".strip()
    s = result["summary"]
    record([{"op": "training", "provider": arm, "shape": shape, "metric": m, "value": f"{s[m]:.6g}", **stamp}
            for m in SUMMARY_KEYS], csv_path, plot=False)  # training_report draws these
    runs_dir.mkdir(parents=True, exist_ok=True)
    meta = {"run": result["name"], "arm": arm, "seed": seed, "length_aware": length_aware, "extra": extra,
            "steps": steps, **stamp}
    text = json.dumps(meta) + "\n" + "".join(json.dumps(r) + "\n" for r in result["curve"])
    atomic_write(runs_dir / f"{result['name']}.jsonl", lambda tmp: Path(tmp).write_text(text))


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="grid", choices=["grid", "truncation", "loss_tokens"])
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--length-aware", choices=["on", "off", "both"], default=None,
                        help="default: both for the grid, on for the sweeps")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of each run (0: torch's default)")
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "rpo" / "bench_training"),
                        help="run directories (checkpoints; an interrupted run resumes)")
    parser.add_argument("--out", default=str(RESULTS_DIR / "training.csv"))
    parser.add_argument("--redo", action="store_true", help="run again even when the run's curve exists")
    args = parser.parse_args(argv)
    la = args.length_aware or ("both" if args.study == "grid" else "on")
    runs_dir = Path(args.out).parent / "training_runs"
    work = Path(args.work)
    for arm, seed, flag, extra in plan(args.study, args.arms, args.seeds, la):
        name = run_name(arm, seed, flag, extra)
        if (runs_dir / f"{name}.jsonl").is_file() and not args.redo:
            print(f"{name}: done before, skipped", flush=True)
            continue
        result = run_one(arm, seed, flag, extra, args.steps, work, args.threads)
        save_run(result, arm, seed, flag, extra, args.steps, Path(args.out), runs_dir)
        s = result["summary"]
        print(f"{name}: acc {s['accuracy_before']:.3f} -> {s['accuracy_after']:.3f}, "
              f"{s['tokens_per_sample']:.1f} tok/sample, rollout {s['rollout_s']:.1f} s, train {s['train_s']:.1f} s, "
              f"cache init {s['cache_init_s']:.1f} s", flush=True)
    print("tables and plots: python -m benchmarks.training_report")


if __name__ == "__main__":
    sys.exit(report_usage_errors("benchmarks.bench_training", lambda: main() or 0))

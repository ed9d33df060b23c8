"""Training comparison in miniature (paper Tables 1-3): GRPO vs GRPO+RPO vs DAPO vs DAPO+RPO on a bundled task.

Every run starts from the same warm-started tiny model, data and budget (``--recipe``, default ``tiny-cpu``, plus
overrides) and is its own ``rpo-train`` process. Three studies:

- ``grid``: the four arms x length-aware reward on/off x seeds;
- ``truncation``: RPO-GRPO with L fixed at each of ``--cuts`` tokens and dynamic at each of ``--factors`` x l (paper
  Table 2, Fig. 6); the grid's RPO arms use the recipe's L;
- ``loss_tokens``: RPO-GRPO with ``loss_tokens: suffix`` (the grid's RPO arms use ``full``, the paper's choice).

Results of recipe R live in ``benchmarks/results/training/R/``: each finished run appends its summary rows to
``runs.csv`` at once and keeps its per-step health curves as ``runs/<run>.jsonl``, so an interrupted study loses
nothing; runs whose curves already exist are skipped (``--redo`` runs them again; a run whose checkpoint in ``--work``
is complete only re-evaluates and re-records). ``python -m benchmarks.training_report --recipe R`` turns the data into
the tables (mean and spread over seeds, RPO/full ratios) and plots.

    python -m benchmarks.bench_training --study grid --seeds 0 1 2 --threads 1
    python -m benchmarks.bench_training --study truncation --seeds 0 1 2 --cuts 4 8 16 60 --factors 0.5
    python -m benchmarks.bench_training --recipe tiny-cpu-addition --study grid --seeds 0 1 2
    python -m benchmarks.bench_training --arms dapo+rpo --length-aware on --seeds 0 1 2 --set objective.beta=0.04
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from rpo_train.runtime.errors import ArgumentParser, UsageError, report_usage_errors

from .harness import RESULTS_DIR, device_name, record, versions

ARMS = {"grpo": ("grpo", "full"), "grpo+rpo": ("grpo", "rpo"), "dapo": ("dapo", "full"), "dapo+rpo": ("dapo", "rpo")}
CURVE_KEYS = ("eval/accuracy", "reward/mean", "reward/accuracy", "rollout/response_len", "rollout/suffix_len",
              "rollout/prefix_len", "rollout/cut_len", "rollout/zero_variance_share", "rollout/generated_tokens",
              "rollout/groups", "cache/mean_length", "cache/correct_share", "cache/mean_reuses",
              "cache/drift_kl_mean", "cache/drift_kl_p95", "cache/drift_m2_mean", "cache/drift_m2_p95",
              "cache/drift_flips_mean", "cache/drift_flipped_share", "cache/drift_drop_mean", "cache/drift_drop_p95",
              "train/kl_mean", "train/grad_norm",
              "rollout/refresh_share", "rollout/cut_limit_mean", "time/probe_s", "time/rollout_s", "time/train_s",
              "time/step_s")
SUMMARY_KEYS = ("accuracy_before", "accuracy_after", "tokens_per_sample", "tokens_generated", "rollout_s", "train_s",
                "cache_init_s", "total_s", "step_s", "refresh_share")


def run_name(arm: str, seed: int, length_aware: bool, extra: dict) -> str:
    """A stable, file-safe name of one run: arm, length-aware flag, seed and the extra overrides."""
    parts = [arm.replace("+", "_"), f"la{int(length_aware)}", f"seed{seed}"]
    parts += [f"{k.split('.')[-1]}-{v}" for k, v in sorted(extra.items())]
    return "_".join(parts)


def truncation_sweep(cuts: list[int], factors: list[float]) -> list[dict]:
    """The truncation settings of the sweep: L fixed at each cut, then dynamic at each factor x l."""
    return ([{"truncation.mode": "fixed", "truncation.max_cut": c} for c in cuts]
            + [{"truncation.mode": "dynamic", "truncation.factor": f} for f in factors])


def parse_sets(items: list[str]) -> dict[str, str]:
    """``["objective.beta=0.04"]`` -> ``{"objective.beta": "0.04"}``; a malformed item is a UsageError."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key or not value:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE with a dotted recipe key, e.g. objective.beta=0.04")
        out[key] = value
    return out


def plan(study: str, arms: list[str], seeds: list[int], length_aware: str, sweep: list[dict] = ()) -> list[tuple]:
    """The runs of a study as (arm, seed, length_aware, extra overrides)."""
    flags = {"on": [True], "off": [False], "both": [True, False]}[length_aware]
    if study == "grid":
        return [(a, s, la, {}) for s in seeds for la in flags for a in arms]
    if study == "truncation":
        return [("grpo+rpo", s, la, dict(t)) for s in seeds for la in flags for t in sweep]
    if study == "loss_tokens":
        return [("grpo+rpo", s, la, {"objective.loss_tokens": "suffix"}) for la in flags for s in seeds]
    raise ValueError(f"--study must be grid, truncation or loss_tokens, got {study!r}")


def run_one(recipe: str, arm: str, seed: int, length_aware: bool, extra: dict, steps: int, work: Path,
            threads: int, eval_every: int | None = None) -> dict:
    """Train one run in its own process (resumed when ``work`` already holds its checkpoint); its summary + curve.
    ``eval_every`` overrides the recipe's evaluation period (not part of the run's name: it changes no update)."""
    algorithm, mode = ARMS[arm]
    name = run_name(arm, seed, length_aware, extra)
    out = work / name
    cmd = [sys.executable, "-m", "rpo_train.cli", "--recipe", recipe, f"out_dir={out}", f"seed={seed}",
           f"steps={steps}",
           f"objective.algorithm={algorithm}", f"objective.mode={mode}",
           f"objective.length_aware={str(length_aware).lower()}", *(f"{k}={v}" for k, v in extra.items()),
           *([f"eval_every={eval_every}"] if eval_every else [])]
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


def save_run(result: dict, recipe: str, arm: str, seed: int, length_aware: bool, extra: dict, steps: int,
             csv_path: Path, runs_dir: Path) -> None:
    """Append the run's summary rows to the CSV and write its curve (both atomically)."""
    from rpo_train.runtime.atomic import atomic_write

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    stamp = {"device": device_name("cpu"), "version": versions(), "date": now}
    overrides = " ".join(f"{k}={v}" for k, v in sorted(extra.items()))
    shape = f"{recipe} steps={steps} length_aware={int(length_aware)} seed={seed} {overrides}".strip()
    s = result["summary"]
    record([{"op": "training", "provider": arm, "shape": shape, "metric": m, "value": f"{s.get(m, 0.0):.6g}", **stamp}
            for m in SUMMARY_KEYS], csv_path, plot=False)  # training_report draws these
    runs_dir.mkdir(parents=True, exist_ok=True)
    meta = {"run": result["name"], "arm": arm, "seed": seed, "length_aware": length_aware, "extra": extra,
            "steps": steps, **stamp}
    text = json.dumps(meta) + "\n" + "".join(json.dumps(r) + "\n" for r in result["curve"])
    atomic_write(runs_dir / f"{result['name']}.jsonl", lambda tmp: Path(tmp).write_text(text))


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="tiny-cpu", help="the bundled recipe (or YAML file) every run starts from")
    parser.add_argument("--study", default="grid", choices=["grid", "truncation", "loss_tokens"])
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--length-aware", choices=["on", "off", "both"], default=None,
                        help="default: both for the grid, on for the sweeps")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=None,
                        help="held-out evaluation every N steps (default: the recipe's eval_every)")
    parser.add_argument("--cuts", type=int, nargs="*", default=[8, 16, 32], help="fixed L of the truncation sweep")
    parser.add_argument("--factors", type=float, nargs="*", default=[0.5, 1.0],
                        help="dynamic L = factor x l of the truncation sweep")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of each run (0: torch's default)")
    parser.add_argument("--work", help="where run directories go, one folder per recipe (checkpoints; an interrupted "
                                       "run resumes; default ~/.cache/rpo/bench_training, runs in WORK/RECIPE)")
    parser.add_argument("--out-dir", help="results folder (default benchmarks/results/training/RECIPE)")
    parser.add_argument("--redo", action="store_true", help="run again even when the run's curve exists")
    parser.add_argument("--set", dest="sets", nargs="*", default=[], metavar="KEY=VALUE",
                        help="recipe overrides added to every run of the study (and to its name), e.g. "
                             "objective.beta=0.04")
    args = parser.parse_args(argv)
    sets = parse_sets(args.sets)
    recipe_name = Path(args.recipe).stem
    la = args.length_aware or ("both" if args.study == "grid" else "on")
    out_dir = Path(args.out_dir) if args.out_dir else RESULTS_DIR / "training" / recipe_name
    runs_dir = out_dir / "runs"
    # one folder per recipe: runs of two recipes have the same names and must not resume each other's checkpoints
    work = (Path(args.work) if args.work else Path.home() / ".cache" / "rpo" / "bench_training") / recipe_name
    sweep = truncation_sweep(args.cuts, args.factors)
    for arm, seed, flag, extra in plan(args.study, args.arms, args.seeds, la, sweep):
        extra = {**extra, **sets}
        name = run_name(arm, seed, flag, extra)
        if (runs_dir / f"{name}.jsonl").is_file() and not args.redo:
            print(f"{name}: done before, skipped", flush=True)
            continue
        result = run_one(args.recipe, arm, seed, flag, extra, args.steps, work, args.threads, args.eval_every)
        save_run(result, recipe_name, arm, seed, flag, extra, args.steps, out_dir / "runs.csv", runs_dir)
        s = result["summary"]
        print(f"{name}: acc {s['accuracy_before']:.3f} -> {s['accuracy_after']:.3f}, "
              f"{s['tokens_per_sample']:.1f} tok/sample, rollout {s['rollout_s']:.1f} s, train {s['train_s']:.1f} s, "
              f"cache init {s['cache_init_s']:.1f} s", flush=True)
    print(f"tables and plots: python -m benchmarks.training_report --recipe {args.recipe}")


if __name__ == "__main__":
    sys.exit(report_usage_errors("benchmarks.bench_training", lambda: main() or 0))

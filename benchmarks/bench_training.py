"""Training comparison in miniature: GRPO vs GRPO+RPO vs DAPO vs DAPO+RPO on the embedded task (paper Tables 1-3).

Every arm starts from the same warm-started tiny model, data and budget (recipe ``tiny-cpu`` with overrides) and runs
as its own ``rpo-train`` process. Per arm: held-out accuracy before/after, generated tokens per sample, rollout /
train / cache-init / total time, and RPO/full ratios. Rows go to benchmarks/results/training.csv, accuracy curves to
training.png.

    python -m benchmarks.bench_training                       # 4 arms x 1 seed, length-aware reward on
    python -m benchmarks.bench_training --seeds 0 1 2 --length-aware both
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .harness import RESULTS_DIR, append_rows, device_name, versions

ARMS = {"grpo": ("grpo", "full"), "grpo+rpo": ("grpo", "rpo"), "dapo": ("dapo", "full"), "dapo+rpo": ("dapo", "rpo")}


def run_arm(name: str, seed: int, length_aware: bool, steps: int, work: Path) -> dict:
    algorithm, rollout = ARMS[name]
    out = work / f"{name}-seed{seed}-la{int(length_aware)}"
    cmd = [sys.executable, "-m", "rpo_train.cli", f"out_dir={out}", f"seed={seed}", f"steps={steps}",
           f"objective.algorithm={algorithm}", f"objective.rollout={rollout}",
           f"objective.length_aware={str(length_aware).lower()}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"arm {name} seed {seed} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    gen = [r for r in rows if "rollout/suffix_len" in r]
    summary["tokens_per_sample"] = sum(r["rollout/suffix_len"] for r in gen) / max(len(gen), 1)
    summary["curve"] = [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    summary["total_s"] = summary["cache_init_s"] + summary["rollout_s"] + summary["train_s"]
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--length-aware", choices=["on", "off", "both"], default="on")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", default=str(RESULTS_DIR / "training.csv"))
    args = parser.parse_args(argv)
    flags = {"on": [True], "off": [False], "both": [True, False]}[args.length_aware]
    stamp = {"device": device_name("cpu"), "version": versions()}
    results, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for la in flags:
            for name in args.arms:
                for seed in args.seeds:
                    s = run_arm(name, seed, la, args.steps, Path(tmp))
                    results[(name, la, seed)] = s
                    print(f"{name:9s} la={int(la)} seed={seed}: acc {s['accuracy_before']:.3f} -> "
                          f"{s['accuracy_after']:.3f}, {s['tokens_per_sample']:.1f} tok/sample, rollout "
                          f"{s['rollout_s']:.1f} s, train {s['train_s']:.1f} s, total {s['total_s']:.1f} s", flush=True)
                    shape = f"tiny-cpu steps={args.steps} length_aware={int(la)} seed={seed}"
                    for metric in ("accuracy_before", "accuracy_after", "tokens_per_sample", "rollout_s", "train_s",
                                   "cache_init_s", "total_s"):
                        rows.append({"op": "training", "provider": name, "shape": shape, "metric": metric,
                                     "value": f"{s[metric]:.6g}", "date": s.get("date", ""), **stamp})
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for r in rows:
        r["date"] = now
    append_rows(args.out, rows)
    print_table(results)
    plot_curves(results, Path(args.out).with_suffix(".png"))


def print_table(results: dict) -> None:
    print("| arm | length-aware | accuracy before -> after | tokens/sample | rollout s | train s | total s | "
          "RPO/full tokens | RPO/full rollout time |\n|---|---|---|---|---|---|---|---|---|")
    for (name, la, seed), s in sorted(results.items()):
        base = results.get((name.replace("+rpo", ""), la, seed)) if name.endswith("+rpo") else None
        ratio = (f"{s['tokens_per_sample'] / base['tokens_per_sample']:.3f} | "
                 f"{s['rollout_s'] / base['rollout_s']:.3f}") if base else " | "
        print(f"| {name} (seed {seed}) | {'on' if la else 'off'} | {s['accuracy_before']:.3f} -> "
              f"{s['accuracy_after']:.3f} | {s['tokens_per_sample']:.1f} | {s['rollout_s']:.1f} | "
              f"{s['train_s']:.1f} | {s['total_s']:.1f} | {ratio} |")


def plot_curves(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (name, la, seed), s in sorted(results.items()):
        ax.plot([p[0] for p in s["curve"]], [p[1] for p in s["curve"]], marker=".",
                label=f"{name} la={int(la)} s{seed}")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out greedy accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()

"""Tables and plot of ``benchmarks.bench_trl``: mean and spread over seeds per arm, the issue's ratios, a plot.

    python -m benchmarks.trl_report            # reads benchmarks/results/trl/runs.csv
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from rpo_train.runtime.atomic import atomic_write

from .harness import RESULTS_DIR

ARMS = ("trl-grpo", "trl-rpo", "rpo-train-full", "rpo-train-rpo")
LABELS = {"trl-grpo": "TRL GRPOTrainer", "trl-rpo": "RPOTrainer (TRL)", "rpo-train-full": "rpo-train full path",
          "rpo-train-rpo": "rpo-train RPO"}
COLORS = {"trl-grpo": "#888", "trl-rpo": "#2a7", "rpo-train-full": "#668", "rpo-train-rpo": "#2a7"}
METRICS = ("accuracy_before", "accuracy_after", "tokens_per_sample", "tokens_generated", "step_s", "total_s")


def load(csv_path: Path) -> dict[str, dict[str, dict[int, float]]]:
    """arm -> metric -> seed -> value (the latest row of each wins)."""
    out: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            seed = int(row["shape"].split("seed=")[1].split()[0])
            out[row["provider"]][row["metric"]][seed] = float(row["value"])
    return out


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "n": len(values)}


def label(arm: str) -> str:
    """``trl-rpo rpo_refresh_drift=1`` -> ``RPOTrainer (TRL) rpo_refresh_drift=1``."""
    base, _, extra = arm.partition(" ")
    return f"{LABELS[base]} {extra}".strip()


def summarize(data) -> dict:
    """Per arm (the four, then variants with RPOConfig overrides): mean, std, min and n over seeds of each metric;
    the ratios the TRL issue sets goals on (the plain arms)."""
    order = [a for a in ARMS if a in data] + sorted(a for a in data if a not in ARMS)
    arms = {a: {m: _stats(list(data[a][m].values())) for m in METRICS if data[a][m]} for a in order}
    mean = {a: {m: s["mean"] for m, s in v.items()} for a, v in arms.items()}
    ratios = {}
    if {"trl-grpo", "trl-rpo"} <= mean.keys():
        ratios["trl_rpo_tokens_per_sample_vs_trl_grpo"] = (mean["trl-rpo"]["tokens_per_sample"]
                                                           / mean["trl-grpo"]["tokens_per_sample"])
        ratios["trl_rpo_accuracy_minus_trl_grpo"] = mean["trl-rpo"]["accuracy_after"] - mean["trl-grpo"][
            "accuracy_after"]
        ratios["trl_grpo_total_vs_trl_rpo"] = mean["trl-grpo"]["total_s"] / mean["trl-rpo"]["total_s"]
    if {"trl-grpo", "rpo-train-full"} <= mean.keys():
        ratios["trl_grpo_step_vs_rpo_train_full_step"] = mean["trl-grpo"]["step_s"] / mean["rpo-train-full"]["step_s"]
    if {"trl-grpo", "rpo-train-rpo"} <= mean.keys():
        ratios["trl_grpo_total_vs_rpo_train_rpo_total"] = (mean["trl-grpo"]["total_s"]
                                                           / mean["rpo-train-rpo"]["total_s"])
        ratios["rpo_train_rpo_accuracy_minus_trl_grpo"] = (mean["rpo-train-rpo"]["accuracy_after"]
                                                           - mean["trl-grpo"]["accuracy_after"])
    return {"arms": arms, "ratios": ratios}


def table(summary: dict) -> str:
    """The docs/trl.md table: one row per arm, mean ± std over seeds (worst seed's accuracy in brackets)."""
    lines = ["| arm | held-out accuracy after (worst) | generated tokens / sample | s / step | run total (s) |",
             "|---|---|---|---|---|"]
    for arm, s in summary["arms"].items():
        acc = s["accuracy_after"]
        lines.append(f"| {label(arm)} | {100 * acc['mean']:.1f} ± {100 * acc['std']:.1f} ({100 * acc['min']:.1f}) "
                     f"| {s['tokens_per_sample']['mean']:.1f} | {s['step_s']['mean']:.2f} ± {s['step_s']['std']:.2f} "
                     f"| {s['total_s']['mean']:.0f} ± {s['total_s']['std']:.0f} |")
    return "\n".join(lines)


def tick(arm: str) -> str:
    """An arm's label broken over lines for the plot's x axis."""
    text = label(arm).replace("TRL GRPO", "TRL\nGRPO").replace(" (TRL)", "\n(TRL)").replace(" full", "\nfull")
    return text.replace(" RPO", "\nRPO").replace(" rpo_", "\nrpo_")


def plot(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(summary["arms"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (metric, title, scale) in zip(axes, [("accuracy_after", "held-out accuracy after (%)", 100),
                                                 ("tokens_per_sample", "generated tokens / sample", 1),
                                                 ("total_s", "run total, eval excluded (s)", 1)]):
        means = [scale * summary["arms"][a][metric]["mean"] for a in arms]
        errs = [scale * summary["arms"][a][metric]["std"] for a in arms]
        ax.bar(range(len(arms)), means, yerr=errs, color=[COLORS.get(a.split()[0], "#2a7") for a in arms], capsize=4)
        ax.set_xticks(range(len(arms)), [tick(a) for a in arms], fontsize=7)
        ax.set_title(title, fontsize=10)
    fig.suptitle("RPO inside TRL vs rpo-train, bundled recurrence task (mean ± std over seeds, 2-core CPU)",
                 fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def report(out_dir: Path) -> str:
    summary = summarize(load(out_dir / "runs.csv"))
    atomic_write(out_dir / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))
    plot(summary, out_dir / "trl.png")
    ratios = "\n".join(f"{k}: {v:.3f}" for k, v in summary["ratios"].items())
    return f"{table(summary)}\n\n{ratios}\n(data: {out_dir / 'summary.json'}, plot: {out_dir / 'trl.png'})"


if __name__ == "__main__":
    print(report(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS_DIR / "trl"))

"""The drift study: full path vs RPO (the paper's, unguarded) vs RPO with the drift guard, per algorithm, over seeds.

Reads what ``benchmarks.bench_training`` wrote into one folder (``runs.csv`` + ``runs/*.jsonl``): the full-path arms,
the RPO arms without overrides (the paper's RPO) and the RPO arms with ``--set`` overrides (guards; one variant per
distinct override set). Prints a markdown table with every goal of the study checked, writes ``drift.json`` and
``drift.png`` (held-out accuracy and the drift statistic of each RPO run, step by step: does drift rise before
accuracy falls?).

    python -m benchmarks.drift_report --dir benchmarks/results/training/tiny-cpu/drift
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from rpo_train.runtime.atomic import atomic_savefig, atomic_write_json
from rpo_train.runtime.errors import ArgumentParser, UsageError, report_usage_errors

from .training_report import load_curves, load_runs

DRIFT_KEY = "cache/drift_m2_p95"


def best_to_final_drop(curve: list[dict]) -> float:
    """Points lost between a run's best held-out evaluation and its final one."""
    acc = [r["eval/accuracy"] for r in curve if "eval/accuracy" in r]
    return 100 * (max(acc) - acc[-1]) if acc else float("nan")


def arm_rows(runs: dict, curves: dict) -> list[dict]:
    """One row per (arm, overrides): mean/sd/worst accuracy, the largest best-to-final drop, costs (means)."""
    by: dict[tuple, list] = {}
    for (arm, la, extra, seed), values in runs.items():
        by.setdefault((arm, extra), []).append((seed, values, curves.get((arm, la, extra, seed), [])))
    rows = []
    for (arm, extra), items in sorted(by.items()):
        acc = [100 * v["accuracy_after"] for _, v, _ in items]
        means = {m: statistics.fmean(v.get(m, 0.0) for _, v, _ in items)
                 for m in ("tokens_per_sample", "tokens_generated", "rollout_s", "step_s", "total_s", "refresh_share")}
        rows.append({"arm": arm, "guard": " ".join(f"{k}={v}" for k, v in extra) or "-", "seeds": len(items),
                     "acc_mean": statistics.fmean(acc), "acc_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                     "acc_worst": min(acc), "per_seed": {s: round(100 * v["accuracy_after"], 1) for s, v, _ in items},
                     "max_drop": max(best_to_final_drop(c) for _, _, c in items), **means})
    return rows


def check_goals(rows: list[dict]) -> list[dict]:
    """Each RPO row against its algorithm's full-path row: the study's goals, met or missed."""
    full = {r["arm"]: r for r in rows if "+rpo" not in r["arm"]}
    out = []
    for r in rows:
        base = full.get(r["arm"].replace("+rpo", ""))
        if "+rpo" not in r["arm"] or base is None:
            continue
        margin = 0.5 if r["arm"].startswith("grpo") else 1.0
        ratios = {k: r[k] / base[k] for k in ("tokens_per_sample", "tokens_generated", "rollout_s", "step_s")}
        goals = {f"mean >= full - {margin}": r["acc_mean"] >= base["acc_mean"] - margin,
                 "worst seed >= full worst - 2": r["acc_worst"] >= base["acc_worst"] - 2,
                 "no seed drops > 2 pt best->final": round(r["max_drop"], 6) <= 2,
                 "run tokens <= 0.15x": ratios["tokens_generated"] <= 0.15,
                 "tokens/sample <= 0.12x": ratios["tokens_per_sample"] <= 0.12,
                 "rollout time <= 0.20x": ratios["rollout_s"] <= 0.20, "step time <= 0.30x": ratios["step_s"] <= 0.30}
        out.append({**r, "vs_full": round(r["acc_mean"] - base["acc_mean"], 2),
                    **{f"x_{k}": round(v, 3) for k, v in ratios.items()}, "goals": goals})
    return out


def table(rows: list[dict], checked: list[dict]) -> str:
    done = {(c["arm"], c["guard"]): c for c in checked}
    head = ("| arm | guard | seeds | accuracy mean ± sd | worst | per seed | largest best->final drop | tokens/sample "
            "| refresh share | x tokens/sample | x run tokens | x rollout time | x step time | goals missed |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        c = done.get((r["arm"], r["guard"]), {})
        ratio = {k: f"{c[k]:.3f}" if c else "" for k in ("x_tokens_per_sample", "x_tokens_generated", "x_rollout_s",
                                                          "x_step_s")}
        missed = (", ".join(g for g, ok in c["goals"].items() if not ok) or "none") if c else ""
        seeds = " ".join(f"{v:g}" for _, v in sorted(r["per_seed"].items()))
        lines.append(f"| {r['arm']} | {r['guard']} | {r['seeds']} | {r['acc_mean']:.1f} ± {r['acc_sd']:.1f} | "
                     f"{r['acc_worst']:.1f} | {seeds} | {r['max_drop']:.1f} | {r['tokens_per_sample']:.1f} | "
                     f"{r['refresh_share']:.3f} | {ratio['x_tokens_per_sample']} | {ratio['x_tokens_generated']} | "
                     f"{ratio['x_rollout_s']} | {ratio['x_step_s']} | {missed} |")
    return "\n".join(lines)


def plot_drift(curves: dict, path: Path) -> Path | None:
    """Per RPO arm (rows) and guard (columns): held-out accuracy (lines with dots) and the drift statistic (thin)
    of each seed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = sorted({(arm, extra) for arm, _, extra, _ in curves if "+rpo" in arm})
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.2 * len(panels)), squeeze=False)
    for ax, (arm, extra) in zip(axes[:, 0], panels):
        twin = ax.twinx()
        for i, ((a, _, e, seed), rows) in enumerate(sorted(curves.items())):
            if (a, e) != (arm, extra):
                continue
            color = f"C{i % 10}"
            acc = [(r["step"], 100 * r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
            drift = [(r["step"], r[DRIFT_KEY]) for r in rows if DRIFT_KEY in r]
            ax.plot(*zip(*acc), marker="o", color=color, label=f"seed {seed}")
            if drift:
                twin.plot(*zip(*drift), color=color, alpha=0.45, linewidth=0.9)
        guard = " ".join(f"{k}={v}" for k, v in extra) or "no guard (the paper's RPO)"
        ax.set_title(f"{arm}, {guard}: held-out accuracy (dots) and drift m2 p95 over the step's entries (thin)",
                     fontsize=9)
        ax.set_ylabel("held-out accuracy %")
        twin.set_ylabel("drift m2 p95")
        ax.set_ylim(0, 102)
        ax.legend(fontsize=7, loc="lower right")
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="a bench_training results folder (runs.csv and runs/)")
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    if not (folder / "runs.csv").is_file():
        raise UsageError(f"--dir {folder}: no runs.csv there (run benchmarks.bench_training --out-dir {folder})")
    runs = {k: v for k, v in load_runs(folder / "runs.csv").items() if k[1]}  # the length-aware reward on
    curves = load_curves(folder / "runs")
    rows = arm_rows(runs, curves)
    checked = check_goals(rows)
    print(table(rows, checked))
    atomic_write_json(folder / "drift.json", {"arms": rows, "checked": checked})
    plot_drift(curves, folder / "drift.png")


if __name__ == "__main__":
    sys.exit(report_usage_errors("benchmarks.drift_report", lambda: main() or 0))

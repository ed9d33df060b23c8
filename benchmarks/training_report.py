"""Tables and plots of the training comparison (``benchmarks/bench_training.py``'s data), in the shape of the paper's
Tables 1-3: mean and spread over seeds per arm, RPO/full ratios, the truncation sweep, ``loss_tokens`` full vs suffix,
and the health curves (reward, response length, zero-variance share, cache mean length) as PNG.

    python -m benchmarks.training_report --recipe tiny-cpu   # prints the markdown tables; writes health*.png,
                                                             # truncation.png, summary.json in results/training/R/
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from rpo_train.config import load_recipe
from rpo_train.runtime.atomic import atomic_savefig, atomic_write_json
from rpo_train.runtime.errors import ArgumentParser, UsageError, report_usage_errors

from .harness import RESULTS_DIR
from .rows import read_rows

METRICS = ("accuracy_before", "accuracy_after", "tokens_per_sample", "tokens_generated", "rollout_s", "train_s",
           "cache_init_s", "total_s", "step_s")
SWEEP_KEYS = ("truncation.mode", "truncation.max_cut", "truncation.factor", "objective.loss_tokens")
HEALTH = ("eval/accuracy", "reward/mean", "rollout/response_len", "rollout/suffix_len",
          "rollout/zero_variance_share", "cache/mean_length")


def parse_shape(shape: str) -> dict:
    """``tiny-cpu steps=60 length_aware=1 seed=0 truncation.max_cut=8`` -> its key=value pairs."""
    return dict(part.split("=", 1) for part in shape.split() if "=" in part)


def load_runs(csv_path: Path) -> dict[tuple, dict]:
    """{(arm, length_aware, extra overrides, seed): {metric: value}} from the newest row of each."""
    newest: dict[tuple, tuple[str, float]] = {}
    for r in read_rows(csv_path):
        if r["op"] != "training":
            continue
        kv = parse_shape(r["shape"])
        extra = tuple(sorted((k, v) for k, v in kv.items() if k not in ("steps", "length_aware", "seed")))
        key = (r["provider"], kv.get("length_aware", "1") == "1", extra, int(kv.get("seed", 0)), r["metric"])
        if key not in newest or r["date"] >= newest[key][0]:
            newest[key] = (r["date"], float(r["value"]))
    runs: dict[tuple, dict] = defaultdict(dict)
    for (arm, la, extra, seed, metric), (_, value) in newest.items():
        runs[(arm, la, extra, seed)][metric] = value
    return dict(runs)


def aggregate(runs: dict[tuple, dict]) -> dict[tuple, dict]:
    """{(arm, la, extra): {metric: (mean, std, n)}} over seeds."""
    by: dict[tuple, list[dict]] = defaultdict(list)
    for (arm, la, extra, _), values in runs.items():
        by[(arm, la, extra)].append(values)
    out = {}
    for key, items in by.items():
        out[key] = {}
        for m in METRICS:
            xs = [v[m] for v in items if m in v]
            if xs:
                out[key][m] = (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0, len(xs))
    return out


def _mean(agg, key, metric):
    return agg[key][metric][0] if key in agg and metric in agg[key] else float("nan")


def grid_table(agg: dict) -> str:
    lines = ["| arm | length-aware | seeds | held-out accuracy (mean ± sd) | tokens / sample | generated tokens | "
             "rollout s | train s | cache init s | total s | RPO/full tokens per sample | RPO/full generated tokens | "
             "RPO/full rollout time | RPO/full step time | RPO/full total time | RPO - full accuracy |",
             "|" + "---|" * 16]
    for la in (True, False):
        for arm in ("grpo", "grpo+rpo", "dapo", "dapo+rpo"):
            key = (arm, la, ())
            if key not in agg:
                continue
            a = agg[key]
            acc = a["accuracy_after"]
            ratios = " | | | | | "
            if arm.endswith("+rpo") and (arm[:-4], la, ()) in agg:
                base = (arm[:-4], la, ())
                step = (_mean(agg, key, "rollout_s") + _mean(agg, key, "train_s")) / (
                    _mean(agg, base, "rollout_s") + _mean(agg, base, "train_s"))
                ratios = (f" {_mean(agg, key, 'tokens_per_sample') / _mean(agg, base, 'tokens_per_sample'):.3f} | "
                          f"{_mean(agg, key, 'tokens_generated') / _mean(agg, base, 'tokens_generated'):.3f} | "
                          f"{_mean(agg, key, 'rollout_s') / _mean(agg, base, 'rollout_s'):.3f} | {step:.3f} | "
                          f"{_mean(agg, key, 'total_s') / _mean(agg, base, 'total_s'):.3f} | "
                          f"{100 * (acc[0] - _mean(agg, base, 'accuracy_after')):+.1f} pt ")
            lines.append(f"| {arm} | {'on' if la else 'off'} | {acc[2]} | {100 * acc[0]:.1f} ± {100 * acc[1]:.1f} | "
                         f"{_mean(agg, key, 'tokens_per_sample'):.1f} | {_mean(agg, key, 'tokens_generated'):,.0f} | "
                         f"{_mean(agg, key, 'rollout_s'):.1f} | "
                         f"{_mean(agg, key, 'train_s'):.1f} | {_mean(agg, key, 'cache_init_s'):.1f} | "
                         f"{_mean(agg, key, 'total_s'):.1f} |{ratios}|")
    return "\n".join(lines)


def _setting_order(extra: tuple, recipe_cut: int) -> tuple:
    kv = dict(extra)
    if "objective.loss_tokens" in kv:
        return (2, 0.0)
    if kv.get("truncation.mode") == "dynamic":
        return (1, float(kv.get("truncation.factor", 0)))
    return (0, float(kv.get("truncation.max_cut", recipe_cut)))


def _setting_name(extra: tuple, recipe_cut: int) -> str:
    return (", ".join(f"{k.split('.')[-1]}={v}" for k, v in extra)
            or f"max_cut={recipe_cut} (recipe), loss_tokens=full")


def plot_sweep(agg: dict, path: Path, recipe_cut: int, steps: str) -> Path | None:
    """Held-out accuracy against the share of full-path tokens per RPO-GRPO setting (the paper's Fig. 6 shape)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = ("grpo", True, ())
    points = [(extra, agg[("grpo+rpo", True, extra)]) for extra in
              sorted({k[2] for k in agg if k[0] == "grpo+rpo" and k[1] and _is_sweep(k[2])},
                     key=lambda e: _setting_order(e, recipe_cut))]
    if base not in agg or not points:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (extra, a) in enumerate(points):
        x = a["tokens_per_sample"][0] / agg[base]["tokens_per_sample"][0]
        kv = dict(extra)
        label = ("loss on suffix only" if "objective.loss_tokens" in kv else
                 f"L = {kv['truncation.factor']} l" if kv.get("truncation.mode") == "dynamic" else
                 f"L = {kv.get('truncation.max_cut', recipe_cut)}")
        ax.errorbar(x, 100 * a["accuracy_after"][0], yerr=100 * a["accuracy_after"][1], fmt="o", capsize=3)
        ax.annotate(label, (x, 100 * a["accuracy_after"][0]), fontsize=7, xytext=(5, 6 - 12 * (i % 3)),
                    textcoords="offset points")
    acc = agg[base]["accuracy_after"]
    ax.axhline(100 * acc[0], color="gray", ls="--", lw=1, label=f"full-path GRPO {100 * acc[0]:.1f}%")
    ax.axhline(100 * agg[base]["accuracy_before"][0], color="gray", ls=":", lw=1, label="before training")
    ax.set_xlabel("RPO / full-path generated tokens per sample")
    ax.set_ylabel(f"held-out accuracy after {steps} steps (%)")
    ax.set_title("RPO-GRPO truncation settings (mean ± sd over seeds)", fontsize=9)
    ax.legend(fontsize=7, loc="center left")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


def sweep_table(agg: dict, recipe_cut: int) -> str:
    """RPO-GRPO (length-aware on) per truncation / loss_tokens setting, against full-path GRPO of the same seeds."""
    lines = ["| RPO-GRPO setting | seeds | held-out accuracy | tokens / sample | RPO/full tokens | rollout s | "
             "RPO/full rollout time | train s |", "|" + "---|" * 8]
    base = ("grpo", True, ())
    settings = sorted({k[2] for k in agg if k[0] == "grpo+rpo" and k[1] and _is_sweep(k[2])},
                      key=lambda e: _setting_order(e, recipe_cut))
    for extra in settings:
        key = ("grpo+rpo", True, extra)
        a = agg[key]
        name = _setting_name(extra, recipe_cut)
        acc = a["accuracy_after"]
        lines.append(f"| {name} | {acc[2]} | {100 * acc[0]:.1f} ± {100 * acc[1]:.1f} | "
                     f"{_mean(agg, key, 'tokens_per_sample'):.1f} | "
                     f"{_mean(agg, key, 'tokens_per_sample') / _mean(agg, base, 'tokens_per_sample'):.3f} | "
                     f"{_mean(agg, key, 'rollout_s'):.1f} | "
                     f"{_mean(agg, key, 'rollout_s') / _mean(agg, base, 'rollout_s'):.3f} | "
                     f"{_mean(agg, key, 'train_s'):.1f} |")
    return "\n".join(lines)


def _is_sweep(extra: tuple) -> bool:
    return all(k in SWEEP_KEYS for k, _ in extra)


def variants_table(agg: dict) -> str:
    """Runs with other overrides (``bench_training --set``), each against the same arm without them and against its
    full-path baseline, same length-aware flag."""
    lines = ["| arm | length-aware | overrides | seeds | held-out accuracy | same arm, recipe settings | "
             "full-path baseline | - baseline |", "|" + "---|" * 8]
    for arm, la, extra in sorted(k for k in agg if k[2] and not _is_sweep(k[2])):
        acc = agg[(arm, la, extra)]["accuracy_after"]
        plain = _mean(agg, (arm, la, ()), "accuracy_after")
        base = _mean(agg, (arm.removesuffix("+rpo"), la, ()), "accuracy_after")
        lines.append(f"| {arm} | {'on' if la else 'off'} | {' '.join(f'{k}={v}' for k, v in extra)} | {acc[2]} | "
                     f"{100 * acc[0]:.1f} ± {100 * acc[1]:.1f} | {100 * plain:.1f} | {100 * base:.1f} | "
                     f"{100 * (acc[0] - base):+.1f} pt |")
    return "\n".join(lines) if len(lines) > 2 else ""


def load_curves(runs_dir: Path) -> dict[tuple, list[dict]]:
    curves = {}
    for path in sorted(runs_dir.glob("*.jsonl")):
        lines = path.read_text().splitlines()
        meta = json.loads(lines[0])
        extra = tuple(sorted((k, str(v)) for k, v in meta["extra"].items()))
        curves[(meta["arm"], meta["length_aware"], extra, meta["seed"])] = [json.loads(x) for x in lines[1:]]
    return curves


def plot_health(curves: dict, path: Path, length_aware: bool = True, title: str = "") -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    drawn = False
    for color, arm in enumerate(("grpo", "grpo+rpo", "dapo", "dapo+rpo")):  # one colour per arm in every panel
        runs = [c for (a, la, extra, _), c in curves.items() if a == arm and la == length_aware and not extra]
        for ax, key in zip(axes.flat, HEALTH):
            if key.startswith("cache/") and not arm.endswith("+rpo"):  # full-path arms never read the cache
                continue
            per_step: dict[int, list[float]] = defaultdict(list)
            for curve in runs:
                for row in curve:
                    if key in row:
                        per_step[row["step"]].append(row[key])
            if per_step:
                steps = sorted(per_step)
                ax.plot(steps, [statistics.fmean(per_step[s]) for s in steps], label=arm, color=f"C{color}",
                        marker="." if key == "eval/accuracy" else None)
                drawn = True
            ax.set_title(f"{key} (mean over seeds)", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
    if not drawn:
        plt.close(fig)
        return None
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{title}, length-aware reward {'on' if length_aware else 'off'}", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="tiny-cpu", help="the recipe whose comparison to report (default tiny-cpu)")
    parser.add_argument("--dir", help="results folder (default benchmarks/results/training/RECIPE)")
    args = parser.parse_args(argv)
    folder = Path(args.dir) if args.dir else RESULTS_DIR / "training" / Path(args.recipe).stem
    csv_path = folder / "runs.csv"
    runs = load_runs(csv_path)
    if not runs:
        raise UsageError(f"no training rows in {csv_path}; run python -m benchmarks.bench_training --recipe "
                         f"{args.recipe} first")
    recipe_cut = load_recipe(args.recipe).truncation.max_cut
    agg = aggregate(runs)
    rows = [r for r in read_rows(csv_path) if r["op"] == "training"]
    steps = parse_shape(rows[0]["shape"]).get("steps", "?")
    print(f"{rows[0]['device']}; {rows[0]['version']}; runs {min(r['date'] for r in rows)} .. "
          f"{max(r['date'] for r in rows)}\n")
    print(grid_table(agg) + "\n")
    print(sweep_table(agg, recipe_cut) + "\n")
    variants = variants_table(agg)
    if variants:
        print(variants + "\n")
    summary = {" ".join(map(str, (k[0], "la" if k[1] else "no-la", *(f"{a}={b}" for a, b in k[2])))): v
               for k, v in agg.items()}
    out = folder / "summary.json"
    atomic_write_json(out, summary)
    curves = load_curves(folder / "runs")
    for la, name in ((True, "health.png"), (False, "health_no_la.png")):
        written = plot_health(curves, folder / name, la, title=Path(args.recipe).stem)
        if written:
            print(f"plot: {written}")
    written = plot_sweep(agg, folder / "truncation.png", recipe_cut, steps)
    if written:
        print(f"plot: {written}")
    print(f"summary: {out}")


if __name__ == "__main__":
    sys.exit(report_usage_errors("benchmarks.training_report", lambda: main() or 0))

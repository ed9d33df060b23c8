"""Plot benchmark rows: one panel per metric (time, peak memory), providers side by side for each shape.

``python -m benchmarks.plot benchmarks/results/policy_loss.csv`` writes ``policy_loss.png`` beside the CSV, using the
newest row of each (op, provider, shape, metric, device).
"""

from __future__ import annotations

import sys
from pathlib import Path

from rpo_train.runtime.atomic import atomic_savefig
from rpo_train.runtime.errors import ArgumentParser, report_usage_errors

from .rows import read_rows

PANELS = (("time_ms_median", "time per call (ms)"), ("peak_mem_mb", "peak extra memory (MiB)"))


def latest(rows: list[dict]) -> dict[tuple, dict]:
    out: dict[tuple, dict] = {}
    for row in sorted(rows, key=lambda r: r["date"]):
        out[(row["op"], row["provider"], row["shape"], row["metric"], row["device"])] = row
    return out


def plot(csv_path: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    csv_path = Path(csv_path)
    table = latest(read_rows(csv_path))
    if not table:
        raise ValueError(f"{csv_path}: no benchmark rows to plot")
    panel_metrics = {metric for metric, _ in PANELS}
    groups = sorted({(k[0], k[2], k[4]) for k in table if k[3] in panel_metrics})
    providers = sorted({k[1] for k in table})
    fig, axes = plt.subplots(1, len(PANELS), figsize=(6 * len(PANELS), 1.2 + 0.9 * len(groups) * len(providers) / 2))
    width = 0.8 / len(providers)
    for ax, (metric, label) in zip(axes, PANELS):
        for i, provider in enumerate(providers):
            values = [float(table[(op, provider, shape, metric, dev)]["value"])
                      if (op, provider, shape, metric, dev) in table else 0.0 for op, shape, dev in groups]
            ax.barh([g + i * width for g in range(len(groups))], values, height=width, label=provider)
        ax.set_yticks([g + 0.4 - width / 2 for g in range(len(groups))])
        ax.set_yticklabels([f"{op} {shape}\n{dev}" for op, shape, dev in groups], fontsize=7)
        ax.set_xlabel(label)
        ax.invert_yaxis()
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out) if out else csv_path.with_suffix(".png")
    atomic_savefig(fig, out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="plot benchmark CSV rows")
    parser.add_argument("csv", help="a CSV under benchmarks/results/")
    parser.add_argument("--out", help="PNG path (default: beside the CSV)")
    args = parser.parse_args(argv)
    print(plot(args.csv, args.out))


if __name__ == "__main__":
    sys.exit(report_usage_errors("benchmarks.plot", lambda: main() or 0))

"""Metrics of a run: one JSON line per step (``metrics.jsonl``), TensorBoard when installed, a summary JSON written
atomically, and plots of the health curves at the end."""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import atomic_savefig, atomic_write_json

PLOTS = ("reward/mean", "eval/accuracy", "rollout/response_len", "rollout/suffix_len",
         "rollout/zero_variance_share", "cache/mean_length", "train/clip_frac", "train/entropy_mean")


class MetricsLogger:
    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "metrics.jsonl"
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tensorboard"))
        except ImportError:
            self.tb = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with self.path.open() as f:
            return [json.loads(line) for line in f if line.strip()]

    def summary(self) -> dict:
        path = self.out / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def save_summary(self, summary: dict) -> None:
        atomic_write_json(self.out / "summary.json", summary)

    def plot(self) -> Path | None:
        """Health curves as ``plots.png``; None when matplotlib is missing or nothing was logged."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        rows = self.rows()
        keys = [k for k in PLOTS if any(k in r for r in rows)]
        if not keys:
            return None
        fig, axes = plt.subplots(2, (len(keys) + 1) // 2, figsize=(4 * ((len(keys) + 1) // 2), 6), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 50 else None)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
        fig.tight_layout()
        out = self.out / "plots.png"
        atomic_savefig(fig, out, dpi=100)
        plt.close(fig)
        return out

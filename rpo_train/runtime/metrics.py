"""Metrics of a run: one JSON line per step (``metrics.jsonl``), TensorBoard when installed, a summary JSON written
atomically, and plots of the health curves at the end.

Exact after a crash: a run killed after its last checkpoint has logged steps that the resumed run will log again,
and a ``kill -9`` in the middle of a write leaves a torn last line. ``resume_at(step)`` (called once the checkpoint
is restored) cuts ``metrics.jsonl`` back to the checkpoint's step, dropping a torn line, with an atomic rewrite, and
TensorBoard opens with ``purge_step`` past that step, so that after any number of crashes each step is logged once
and the plots equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .atomic import atomic_savefig, atomic_write, atomic_write_json, writing

PLOTS = ("reward/mean", "eval/accuracy", "eval/pass_at_k", "eval/mean_at_k",
         "rollout/response_len", "rollout/suffix_len",
         "rollout/zero_variance_share", "cache/mean_length", "train/clip_frac", "train/entropy_mean",
         "cache/drift_m2_p95", "rollout/refresh_share")


def _parse(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("step"), int) else None


class MetricsLogger:
    """The metrics files of one run under ``out_dir``; ``resume_at`` before the first ``log``."""

    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir)
        with writing(self.out):
            self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "metrics.jsonl"
        self.tb = None
        self._purge_step: int | None = None

    def resume_at(self, step: int) -> int:
        """Keep only the rows of steps <= ``step`` (the restored checkpoint's; -1 for a run starting afresh) and
        lines that parse; returns how many lines were dropped. TensorBoard events after ``step`` are purged when it
        opens."""
        self._purge_step = step + 1
        if not self.path.is_file():
            return 0
        lines = self.path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if (row := _parse(line)) is not None and row["step"] <= step]
        if len(kept) != len(lines) or (kept and not kept[-1].endswith("\n")):
            text = "".join(line if line.endswith("\n") else line + "\n" for line in kept)
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
        return len(lines) - len(kept)

    def _tensorboard(self):
        if self.tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return None
            self.tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=self._purge_step)
        return self.tb

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one row (flushed to disk before returning, so a checkpoint written after it never outlives it). A
        failed write is a ``WriteFailedError`` naming the file; a torn row it leaves is dropped by ``resume_at``."""
        with writing(self.path), self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with writing(self.out / "tensorboard"):
            tb = self._tensorboard()
            if tb is not None:
                for k, v in metrics.items():
                    tb.add_scalar(k, v, step)
                tb.flush()

    def rows(self) -> list[dict]:
        """Every row that parses (a torn last line left by a crash is skipped)."""
        if not self.path.is_file():
            return []
        with self.path.open() as f:
            return [row for line in f if (row := _parse(line)) is not None]

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

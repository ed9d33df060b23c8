"""Checks of a run's inputs before anything heavy starts: the machine, the output folder, what the reward needs
(``rpo_train.run_inputs`` then loads them). Each failure is a ``UsageError`` naming the field, file or machine and
what was expected."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from .errors import MissingPathError, UsageError


def check_device(device: str) -> None:
    """``device`` (cpu, cuda, cuda:N) exists on this machine."""
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise UsageError(f"device={device}: {why} on this machine (torch {torch.__version__}); use device=cpu")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise UsageError(f"device={device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")


def check_out_dir(out_dir: str | Path) -> Path:
    """``out_dir`` is a folder or can be made one (not a file, not under a file)."""
    path = Path(out_dir)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise MissingPathError(f"out_dir={out_dir}: {part} is a file; out_dir must be a folder (it holds "
                                   "checkpoints, metrics and plots)")
    return path


def check_reward(name: str) -> None:
    """What the reward ``name`` needs is installed."""
    if name == "math" and importlib.util.find_spec("math_verify") is None:
        raise UsageError("reward=math needs math-verify, which is not installed (pip install math-verify)")

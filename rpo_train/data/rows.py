"""A source's rows ``{"id", "question", "answer"}`` (and reasoning-gym's ``entry``): from a bundled task
(``rpo_train.task``), local files through 🤗 datasets (``rpo_train.data.files``) or reasoning-gym
(``rpo_train.data.gym``). ``rpo_train.data.question`` turns them into the run's ``Question`` objects."""

from __future__ import annotations

from ..task import make_task
from .config import DataSection, FileData, GymData


def load_rows(cfg: DataSection) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows) of the source ``cfg`` describes."""
    if isinstance(cfg, FileData):
        from .files import file_rows

        return file_rows(cfg)
    if isinstance(cfg, GymData):
        from .gym import gym_rows

        return gym_rows(cfg)
    return make_task(cfg).splits()

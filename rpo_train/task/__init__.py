"""The bundled synthetic tasks, their character tokenizers and warm starts.

- ``addition``: column addition whose warm model forgets carries in its columns, so a response's outcome is decided
  early (the documented case where RPO's premise fails);
- ``recurrence``: a long mod-10 recurrence whose closing applies the question's multiplier and whose warm model
  second-guesses there, so the outcome is decided at the end (RPO's premise).

Each task has ``splits()`` (disjoint seeded train/test rows), ``solution(row, flawed)`` and ``tokenizer()``.
"""

from __future__ import annotations

from .addition import AdditionTask
from .recurrence import RecurrenceTask

TASKS = ("addition", "recurrence")


def make_task(data_cfg) -> AdditionTask | RecurrenceTask:
    """The bundled task a ``DataConfig`` names (``data.task``: addition or recurrence)."""
    if data_cfg.task == "addition":
        return AdditionTask(data_cfg.digits, data_cfg.n_train, data_cfg.n_test, data_cfg.seed)
    if data_cfg.task == "recurrence":
        return RecurrenceTask(data_cfg.terms, data_cfg.n_train, data_cfg.n_test, data_cfg.seed)
    raise ValueError(f"data.task {data_cfg.task!r} is not a bundled task; bundled: {TASKS}")

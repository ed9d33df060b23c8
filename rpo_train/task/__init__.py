"""The bundled synthetic tasks, their character tokenizers and warm starts.

- ``addition``: column addition whose warm model forgets carries in its columns, so a response's outcome is decided
  early (the documented case where RPO's premise fails);
- ``recurrence``: a long mod-10 recurrence whose closing states the last term and whose warm model
  second-guesses there, so the outcome is decided at the end (RPO's premise);
- ``recurrence_sum``: the same recurrence whose closing must compute the sum of the last three terms and whose warm
  model has several flawed closing habits (the last term, an off-by-one, a second guess), so RL needs many more steps
  (RPO's premise on a task that is slow to learn).

Each task has ``splits()`` (disjoint seeded train/test rows), ``solution(row, flawed)`` and ``tokenizer()``.
"""

from __future__ import annotations

from .addition import AdditionTask
from .recurrence import RecurrenceTask
from .recurrence_sum import RecurrenceSumTask

TASKS = ("addition", "recurrence", "recurrence_sum")


def make_task(data_cfg) -> AdditionTask | RecurrenceTask | RecurrenceSumTask:
    """The bundled task a ``BundledData`` section names (``data.task``: addition, recurrence or recurrence_sum)."""
    if data_cfg.task == "addition":
        return AdditionTask(data_cfg.digits, data_cfg.n_train, data_cfg.n_test, data_cfg.seed)
    if data_cfg.task == "recurrence":
        return RecurrenceTask(data_cfg.terms, data_cfg.n_train, data_cfg.n_test, data_cfg.seed)
    if data_cfg.task == "recurrence_sum":
        return RecurrenceSumTask(data_cfg.terms, data_cfg.n_train, data_cfg.n_test, data_cfg.seed)
    raise ValueError(f"data.task {data_cfg.task!r} is not a bundled task; bundled: {TASKS}")

"""The split sizes a bundled task serves, and where its test split begins.

A bundled task draws its questions in a seeded order, the train split first. The test split begins after the train
split and after the first ``reserved`` questions (the task's default train size, which the warm starts learn from),
where the generator leaves room for them: so it is the same for every ``n_train`` up to the default, and a warm start
never meets its own questions in the run's test split. Sizes the generator cannot serve are one ``UsageError`` naming
``data.n_train`` or ``data.n_test``.
"""

from __future__ import annotations

from ..runtime.errors import UsageError


def check_sizes(n_train: int, n_test: int, capacity: int, what: str) -> None:
    """Refuse split sizes below 1, or more than the ``capacity`` distinct questions of the task ``what`` (both
    splits are disjoint), naming the field to change."""
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if value < 1:
            raise UsageError(f"data.{name} must be >= 1, got {value}")
    if n_train >= capacity:
        raise UsageError(f"data.n_train must be at most {capacity - 1} (the {what} has {capacity} distinct questions "
                         f"and data.n_test needs at least one), got {n_train}")
    if n_train + n_test > capacity:
        raise UsageError(f"data.n_test must be at most {capacity - n_train} with data.n_train={n_train} (the {what} "
                         f"has {capacity} distinct questions, split disjointly), got {n_test}")


def first_test_index(n_train: int, n_test: int, reserved: int, capacity: int) -> int:
    """Index of the first test question in the seeded order: after the train split, and after the first
    ``reserved`` questions where ``n_test`` more still fit."""
    return max(n_train, min(reserved, capacity - n_test))

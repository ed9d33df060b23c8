"""The harder premise task: the recurrence of ``recurrence`` whose closing must compute the answer.

The questions and the counted-down mod-10 Fibonacci body are those of ``RecurrenceTask`` (153 to 234 tokens for 17 to
26 steps, its last line ``00:t+u=v;`` with the last three terms t, u, v). The closing adds the last term to the term
two before it and answers the sum mod 10: ``\nsum: t+v=s\nAnswer: s`` (21 tokens, 8 to 12% of the response). The
answer is decided there: the digit after ``=`` and the line after it. (Not the sum of all three terms: with v = t + u
that is 2v mod 10, always even, and a policy learns to guess among five answers instead of reasoning. t + v = 2t + u
mod 10 is uniform over the questions.)

The warm start learns several flawed closing habits (``HABITS``), each drawn by ``habit_weights``:

- ``last``: answers the last term instead of the sum, ``\nsum: t+v=v\nAnswer: v`` (right only when t = 0);
- ``off``: an off-by-one in the sum, ``\nsum: t+v=s+1\nAnswer: s+1`` (mod 10; never right);
- ``doubt``: writes the sum, then second-guesses it with the last two terms instead,
  ``\nsum: t+v=s, no u+v=w\nAnswer: w`` with w = (u + v) mod 10 (right only when t = u).

``last`` and ``off`` branch from the correct closing at the sum's digit, ``doubt`` after it, so RL must unlearn habits
at two tokens. No flawed closing is shorter than the correct one (``doubt`` is 10 tokens longer), so fixing a closing
never lengthens a response: RPO's suffix budget (at most the m tokens cut) never stops a continuation from writing
the correct closing, and a cut of L >= 32 tokens (31 of the longest closing, with its EOS) reaches back before every
closing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..runtime.errors import UsageError
from .recurrence import CHARS as RECURRENCE_CHARS
from .recurrence import RecurrenceTask
from .tokenizer import build_tokenizer

CHARS = RECURRENCE_CHARS + "um"
HABITS = ("last", "off", "doubt")


@dataclass(frozen=True)
class RecurrenceSumTask(RecurrenceTask):
    """The recurrence task with a computed closing. ``habit_weights``: the relative weights of the flawed habits
    (``HABITS`` order) that ``draw_habit`` draws from (they enter the warm start's cache key with the task)."""

    habit_weights: tuple[float, ...] = (0.4, 0.3, 0.3)

    def __post_init__(self):
        super().__post_init__()
        if len(self.habit_weights) != len(HABITS) or min(self.habit_weights) < 0 or sum(self.habit_weights) <= 0:
            raise UsageError(f"habit_weights must be {len(HABITS)} weights >= 0 (for {HABITS}) with a positive sum, "
                             f"got {self.habit_weights}")

    def splits(self) -> tuple[list[dict], list[dict]]:
        """(train, test) rows of the recurrence task (the same questions for the same seed), ``id`` prefixed
        ``sum-`` and ``answer`` the sum mod 10 of the last three terms."""
        train, test = super().splits()
        return [self._summed(r) for r in train], [self._summed(r) for r in test]

    def _summed(self, row: dict) -> dict:
        t, u, v = self.last_three(row)
        return {**row, "id": "sum-" + row["id"], "answer": str((t + v) % 10)}

    def last_three(self, row: dict) -> tuple[int, int, int]:
        """The last three terms (t, u, v) of the row's worked steps (v = t + u mod 10)."""
        _, (u, v) = self.worked(row["a"], row["b"], row["n"])
        return (v - u) % 10, u, v

    def draw_habit(self, rng: random.Random) -> str:
        """A flawed habit drawn by ``habit_weights`` (the warm start's mix)."""
        return rng.choices(HABITS, weights=self.habit_weights)[0]

    def solution(self, row: dict, flawed: bool | str = False) -> str:
        """The worked solution of ``row``: the correct closing, or the flawed habit ``flawed`` names (one of
        ``HABITS``; ``True`` is ``last``)."""
        steps, _ = self.worked(row["a"], row["b"], row["n"])
        t, u, v = self.last_three(row)
        s = (t + v) % 10
        head = f"\nsum: {t}+{v}="
        habit = "last" if flawed is True else flawed
        if not habit:
            closing = f"{head}{s}\nAnswer: {s}"
        elif habit == "last":
            closing = f"{head}{v}\nAnswer: {v}"
        elif habit == "off":
            closing = f"{head}{(s + 1) % 10}\nAnswer: {(s + 1) % 10}"
        elif habit == "doubt":
            closing = f"{head}{s}, no {u}+{v}={(u + v) % 10}\nAnswer: {(u + v) % 10}"
        else:
            raise ValueError(f"unknown habit {habit!r}; habits: {HABITS}")
        return "".join(steps) + closing

    def tokenizer(self):
        return build_tokenizer(CHARS)

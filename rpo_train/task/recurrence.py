"""The bundled task with the shape of long reasoning: a long recurrence whose closing decides the answer.

A question gives a step count and the first step of the Fibonacci recurrence mod 10, ``19:4+7=1;``. The worked
solution counts the steps down, one ``r:x+y=z;`` line per step (9 tokens: 153 to 234 for 17 to 26 steps), then closes
by stating the last term v: ``\\nlast: v\\nAnswer: v`` (18 tokens, 8 to 12% of the response). The answer is decided
in that closing: the reasoning before it establishes v, and the closing can still answer something else.

The flawed closing of the warm start second-guesses a finished answer and takes the term before, u:
``\\nlast: v, no u\\nAnswer: u`` (wrong unless u = v). It is 6 tokens longer than the correct closing, so fixing it
only ever shortens a response: RPO's suffix budget (at most the m tokens cut) never stops a continuation from writing
the correct closing.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from ..runtime.errors import UsageError
from .sizes import check_sizes, first_test_index
from .tokenizer import build_tokenizer

CHARS = "0123456789+=;:, \nlastnoAwer"
SPREAD = 10  # step counts terms .. terms + 9
GIVEN = 3  # worked steps the question gives


@dataclass(frozen=True)
class RecurrenceTask:
    """Generator of the task: questions of ``terms`` to ``terms + 9`` steps; train/test sizes; ``seed`` fixes both
    (disjoint) splits, drawn from the 1,000 distinct questions (first terms a, b in 0..9, ten step counts). The test
    split begins after the first 400 (the default train split, which the warm start learns from) where it fits
    (``rpo_train.task.sizes``)."""

    terms: int = 17
    n_train: int = 400
    n_test: int = 200
    seed: int = 1234

    def __post_init__(self):
        if not 2 <= self.terms <= 99 - SPREAD:
            raise UsageError(f"data.terms must be in [2, {99 - SPREAD}], got {self.terms}")
        check_sizes(self.n_train, self.n_test, self.capacity, "recurrence task")

    @property
    def capacity(self) -> int:
        """The distinct questions the task draws its splits from."""
        return 100 * SPREAD

    def splits(self) -> tuple[list[dict], list[dict]]:
        """(train, test) rows ``{"id", "question", "answer", "n", "a", "b"}``; disjoint, the same for the same
        seed."""
        triples = list(itertools.product(range(self.terms, self.terms + SPREAD), range(10), range(10)))
        random.Random(self.seed).shuffle(triples)
        start = first_test_index(self.n_train, self.n_test, type(self).n_train, self.capacity)
        return ([self._row(*t) for t in triples[:self.n_train]],
                [self._row(*t) for t in triples[start:start + self.n_test]])

    def _row(self, n: int, a: int, b: int) -> dict:
        given, _ = self._run(a, b, n + GIVEN, GIVEN)
        _, (_, v) = self.worked(a, b, n)
        return {"id": f"rec-{n}-{a}-{b}", "question": "".join(given), "answer": str(v), "n": n, "a": a, "b": b}

    @staticmethod
    def _run(x: int, y: int, r: int, count: int) -> tuple[list[str], tuple[int, int]]:
        """``count`` steps ``r:x+y=z;`` counting r down from ``r - 1``, from the terms (x, y); returns them and the
        last pair of terms."""
        steps = []
        for step in range(r - 1, r - 1 - count, -1):
            z = (x + y) % 10
            steps.append(f"{step:02d}:{x}+{y}={z};")
            x, y = y, z
        return steps, (x, y)

    def worked(self, a: int, b: int, n: int) -> tuple[list[str], tuple[int, int]]:
        """The n steps (n-1 .. 0) after the question's given ones, and the last pair of terms (u, v)."""
        _, (x, y) = self._run(a, b, n + GIVEN, GIVEN)
        return self._run(x, y, n, n)

    def solution(self, row: dict, flawed: bool = False) -> str:
        """The worked solution of ``row``; ``flawed`` closes with the second-guessing habit (a wrong answer)."""
        steps, (u, v) = self.worked(row["a"], row["b"], row["n"])
        closing = f"\nlast: {v}, no {u}\nAnswer: {u}" if flawed else f"\nlast: {v}\nAnswer: {v}"
        return "".join(steps) + closing

    def tokenizer(self):
        return build_tokenizer(CHARS)

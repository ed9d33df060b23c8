"""Column addition with worked steps: the bundled synthetic reasoning task of the default recipe.

A question ``12345+67890=`` is answered digit by digit from the right, one step per column, then a final line::

    5+0=5 c0;4+9=13 c1;3+8+1=12 c1;2+7+1=10 c1;1+6+1=8 c0;
    Answer: 80235

Two five-digit numbers give 70 to 80 characters of work. ``make_solution(..., skip_carry=True)`` writes the flawed
procedure that forgets an incoming carry (``3+8=11`` instead of ``3+8+1=12``); the warm-start data mixes it in, so the
warm model starts with a systematic bug that reinforcement learning can remove. Splits are fixed by seed and disjoint;
the test split begins after the first 2000 questions (the default train split, which the warm start learns from)
where it fits (``rpo_train.task.sizes``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..runtime.errors import UsageError
from .sizes import check_sizes, first_test_index
from .tokenizer import build_tokenizer


@dataclass(frozen=True)
class AdditionTask:
    """Generator of the task. ``digits`` per operand; train/test sizes; ``seed`` fixes both splits."""

    digits: int = 5
    n_train: int = 2000
    n_test: int = 200
    seed: int = 1234

    def __post_init__(self):
        if not 1 <= self.digits <= 12:
            raise UsageError(f"data.digits must be in [1, 12], got {self.digits}")
        check_sizes(self.n_train, self.n_test, self.capacity, f"addition task of {self.digits}-digit operands")

    @property
    def capacity(self) -> int:
        """The distinct questions the task draws its splits from: half the operand pairs, so drawing stays quick."""
        return (9 * 10 ** (self.digits - 1)) ** 2 // 2

    def splits(self) -> tuple[list[dict], list[dict]]:
        """(train, test) rows ``{"id", "question", "answer"}``; disjoint, the same for the same seed."""
        rng = random.Random(self.seed)
        lo, hi = 10 ** (self.digits - 1), 10 ** self.digits - 1
        start = first_test_index(self.n_train, self.n_test, type(self).n_train, self.capacity)
        seen, rows = set(), []
        while len(rows) < start + self.n_test:
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
            if (a, b) in seen:
                continue
            seen.add((a, b))
            rows.append({"id": f"add-{a}-{b}", "question": f"{a}+{b}=", "answer": str(a + b), "a": a, "b": b})
        return rows[:self.n_train], rows[start:]

    def solution(self, row: dict, flawed: bool = False) -> str:
        """The worked solution of ``row``; ``flawed`` forgets incoming carries (the warm start's habit)."""
        return make_solution(row["a"], row["b"], skip_carry=flawed)

    def tokenizer(self):
        return build_tokenizer()


def make_solution(a: int, b: int, skip_carry: bool = False) -> str:
    """The worked column addition of ``a + b`` (with the forgotten-carry flaw when ``skip_carry``)."""
    xs, ys = str(a)[::-1], str(b)[::-1]
    width = max(len(xs), len(ys))
    carry, steps, out = 0, [], []
    for i in range(width):
        x = int(xs[i]) if i < len(xs) else 0
        y = int(ys[i]) if i < len(ys) else 0
        used = 0 if skip_carry else carry
        total = x + y + used
        steps.append(f"{x}+{y}{'+1' if used else ''}={total} c{total // 10};")
        out.append(str(total % 10))
        carry = total // 10
    if carry:
        out.append("1")
    return "".join(steps) + "\nAnswer: " + ("".join(reversed(out)).lstrip("0") or "0")

"""Rewards of the RPO loop: answer correctness, format, the length-aware shaping of RPO and DAPO's overlong shaping.

A reward function has the signature ``fn(question, response_text: str) -> RewardResult`` where ``question`` is the
run's ``rpo_train.data.Question`` (its reference ``answer``, and reasoning-gym's ``entry``); the bundled rewards also
take a mapping with an ``"answer"`` (a TRL dataset row's columns). Shaping functions act on a whole group afterwards.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

BOXED = re.compile(r"\\boxed\{")
ANSWER_LINE = re.compile(r"(?:^|\n)\s*(?:final answer|answer)\s*[:=]\s*(.+?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class RewardResult:
    reward: float
    correct: bool


class RewardFn(Protocol):
    def __call__(self, question, response_text: str) -> RewardResult: ...


def _answer_of(sample) -> str:
    """The reference answer of a ``Question`` (its ``answer``) or of a mapping (its ``"answer"``)."""
    answer = sample.get("answer") if isinstance(sample, Mapping) else getattr(sample, "answer", None)
    if answer in (None, ""):
        keys = sorted(sample) if isinstance(sample, Mapping) else type(sample).__name__
        raise ValueError(f"the question has no 'answer' to check against: {keys}")
    return str(answer)


def math_verify_reward(sample, response_text: str) -> RewardResult:
    """1.0 when math-verify finds the response's final answer equal to the question's answer, else 0.0."""
    from math_verify import parse, verify

    gold = parse(_answer_of(sample))
    if not gold:
        gold = parse(f"${_answer_of(sample)}$")
    pred = parse(response_text)
    ok = bool(gold) and bool(pred) and bool(verify(gold, pred))
    return RewardResult(float(ok), ok)


def final_answer(response_text: str) -> str | None:
    """The text after the last 'Answer:' line, or None."""
    match = ANSWER_LINE.findall(response_text.strip())
    return match[-1].strip() if match else None


def exact_answer_reward(sample, response_text: str) -> RewardResult:
    """1.0 when the response's last 'Answer: X' line equals the question's answer exactly (embedded task verifier)."""
    got = final_answer(response_text)
    ok = got is not None and got == _answer_of(sample).strip()
    return RewardResult(float(ok), ok)


REWARDS = {"exact": exact_answer_reward, "math": math_verify_reward}


def format_reward(sample, response_text: str, weight: float = 0.1) -> RewardResult:
    """``weight`` when the response states a final answer ('Answer: X' or \\boxed{X}); never marks it correct."""
    has = final_answer(response_text) is not None or bool(BOXED.search(response_text))
    return RewardResult(weight if has else 0.0, False)


def length_aware(rewards: list[float], correct: list[bool], lengths: list[int], alpha: float = 0.01) -> list[float]:
    """RPO's length-aware shaping of one group.

    For a correct response: ``R_i = clip(r_i / (1 + exp(-alpha * (l_ref - len_i))), 0.5, 1.0)`` with l_ref the mean
    length of the group's responses; other responses keep their reward.
    """
    if not (len(rewards) == len(correct) == len(lengths)) or not rewards:
        raise ValueError("rewards, correct and lengths must be equal, non-empty lists (one group)")
    if alpha < 0:
        raise ValueError(f"argument 'alpha' must be >= 0, got {alpha}")
    l_ref = sum(lengths) / len(lengths)
    shaped = []
    for r, ok, n in zip(rewards, correct, lengths):
        if ok:
            x = -alpha * (l_ref - n)
            sig = 1.0 / (1.0 + math.exp(x)) if x < 700 else 0.0
            shaped.append(min(max(r * sig, 0.5), 1.0))
        else:
            shaped.append(r)
    return shaped


def overlong_penalty(length: int, max_length: int, buffer: int, factor: float = 1.0) -> float:
    """DAPO's soft overlong punishment, on the FULL response length (prefix + suffix).

    0 up to ``max_length - buffer``; then linear down to ``-factor`` at ``max_length``; ``-factor`` beyond.
    """
    if buffer < 0 or buffer > max_length:
        raise ValueError(f"argument 'buffer' must be in [0, max_length={max_length}], got {buffer}")
    start = max_length - buffer
    if length <= start:
        return 0.0
    if length <= max_length and buffer > 0:
        return (start - length) / buffer * factor
    return -factor

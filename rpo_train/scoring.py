"""Decode, then score: sample completions under one ``SamplingParams`` and reward each decoded response.

The one path from an engine call to rewards, shared by the step's groups (``rpo_train.groups``), the cache init
(``rpo_train.cache_init``), evaluation (``rpo_train.trainer``) and the segment analysis (``rpo_train.analyze``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .rewards import RewardFn
from .rollout.interface import Completion, RolloutEngine
from .rollout.params import SamplingParams


@dataclass(frozen=True)
class Scored:
    """One sampled completion and its verdict.

    completion: the engine's ``Completion`` (suffix token ids, the sampler's fp32 log-probs, finish reason). text:
    prefix + completion decoded with special tokens skipped. reward, correct: ``reward_fn(row, text)``.
    """

    completion: Completion
    text: str
    reward: float
    correct: bool


def sample_and_score(engine: RolloutEngine, rows: Sequence[dict], prompts: Sequence[Sequence[int]],
                     params: SamplingParams, tokenizer, reward_fn: RewardFn, *,
                     prefixes: Sequence[Sequence[int]] | None = None, n: int = 1) -> list[list[Scored]]:
    """Sample ``n`` completions of each ``prompts[i] + prefixes[i]`` under ``params`` in one ``engine.generate``
    call, decode each with its prefix and score it with ``reward_fn(rows[i], text)``.

    Returns one list of ``n`` ``Scored`` per row, in the engine's order (the same tokens as ``engine.generate``
    with the same arguments). No rows: no engine call, an empty list.
    """
    if not rows:
        return []
    out = engine.generate(prompts, prefixes=prefixes, n=n, params=params)
    heads = [[]] * len(rows) if prefixes is None else [list(p) for p in prefixes]
    scored = []
    for row, head, comps in zip(rows, heads, out):
        group = []
        for c in comps:
            text = tokenizer.decode(head + list(c.token_ids), skip_special_tokens=True)
            result = reward_fn(row, text)
            group.append(Scored(c, text, float(result.reward), bool(result.correct)))
        scored.append(group)
    return scored

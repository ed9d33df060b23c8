"""What RPOTrainer reads from the user's rewards, without changing them: which reward says "correct", and RPO's
length-aware shaping as a reward component of its own.

The user's reward functions reach TRL and its logs exactly as they returned them. RPO needs one bit per response
(correct or not: the cache's bookkeeping and the shaping) from the correctness reward: the only reward function, or
the one ``rpo_correct_reward`` names when there are several. A value counts as correct when it is > 0 for rewards in
[0, 1]; a reward outside [0, 1] needs ``rpo_correct_threshold`` (correct: value >= threshold).

With ``rpo_length_aware`` on, the shaping of the paper (``rpo_train.rewards.length_aware``: a correct response
scored r gets ``clip(r * sigmoid(alpha * (l_ref - len)), 0.5, 1)`` for r = 1) is added as the component
``rpo_length`` = shaped - r (<= 0, only on correct responses; for other r the same factor scales r), with the
correctness reward's weight, so ``rewards/rpo_length/mean`` shows what it did and every user column stays as it was.
"""

from __future__ import annotations

import math

from ..rewards import length_aware

LENGTH_COMPONENT = "rpo_length"


def rpo_length(prompts, completions, **kwargs) -> list[float]:
    """The ``rpo_length`` reward column's placeholder: RPOTrainer fills it in once the whole group is scored (the
    shaping needs the group's lengths and the correctness reward), so it is 0 until then."""
    return [0.0] * len(prompts)


def correct_column(names: list[str], setting: str | None) -> int:
    """The index of the correctness reward among the reward functions ``names``: ``setting`` is an index or a name;
    None is allowed only with a single reward function."""
    if setting is None:
        if len(names) == 1:
            return 0
        raise ValueError(f"RPOConfig.rpo_correct_reward must name the correctness reward when there are several "
                         f"reward functions ({names}): give its name or index")
    if setting in names:
        return names.index(setting)
    if setting.isdigit() and int(setting) < len(names):
        return int(setting)
    raise ValueError(f"RPOConfig.rpo_correct_reward={setting!r} is neither the name nor the index of a reward "
                     f"function; they are {names}")


def correctness(values: list[float], threshold: float | None, name: str) -> list[bool]:
    """Which responses the correctness reward ``name`` calls correct (NaN: not scored, not correct)."""
    if threshold is not None:
        return [not math.isnan(v) and v >= threshold for v in values]
    outside = [v for v in values if not math.isnan(v) and not 0.0 <= v <= 1.0]
    if outside:
        raise ValueError(f"reward function {name!r} returned {outside[0]!r}, outside [0, 1]: set "
                         "RPOConfig.rpo_correct_threshold (a response is correct when its value reaches it)")
    return [not math.isnan(v) and v > 0 for v in values]


def length_deltas(values: list[float], correct: list[bool], lengths: list[int], group_size: int,
                  alpha: float) -> list[float]:
    """The ``rpo_length`` component of every row, group by group (rows of a group consecutive)."""
    out: list[float] = []
    for lo in range(0, len(values), group_size):
        ok, n = correct[lo:lo + group_size], lengths[lo:lo + group_size]
        factors = length_aware([1.0] * len(ok), ok, n, alpha)
        out += [v * (f - 1.0) if c else 0.0 for v, c, f in zip(values[lo:lo + group_size], ok, factors)]
    return out

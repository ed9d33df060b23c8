"""The rules of one RPO step, for any trainer: what a group samples (cut, prefix, suffix budget, refresh) and how
its scored responses update the experience cache.

Both trainers call these two functions: ``rpo-train`` (``rpo_train.groups``, ``rpo_train.trainer``) and
``RPOTrainer`` inside TRL (``rpo_train.integrations.trl``). A trainer only decides where the randomness of a group
comes from (``seed``: one integer per group, from which the refresh draw and the cut are derived) and how samples are
drawn; the full path is a plan whose prefix is empty.

    entry is None                       -> full path, refresh "init" (the question's lazy cache init)
    refresh_reason(entry, drift, ...)   -> full path, refresh "drift" | "reuses" | "share"
    else m = truncation.cut(entry)      -> prefix = response[:len - m]  (m = 0 is raised to 1: nothing cut would
                                           repeat the cached response G times and carry no signal)
    budget = suffix_budget(setting, m, room = max_len - len(prefix)), in [1, room]
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .cache import CacheConfig, CacheEntry, ExperienceCache
from .cuts import TruncationConfig
from .drift import Drift, refresh_reason
from .runtime.seeding import derive_seed

BUDGETS = ("m", "auto")


@dataclass(frozen=True)
class Plan:
    """What one group samples: ``prefix`` (token ids kept from the cached response, with its writers' log-probs)
    then at most ``budget`` new tokens per sample. ``cut``: the m tokens cut (0 on a refresh or init);
    ``refresh``: why the group runs the full path ("init" or ``rpo_train.drift.REASONS``), else None; ``drift``:
    its entry's drift before the step, when probed; ``reuses``/``cut_limit``: what the cache stores after."""

    prefix: list[int]
    prefix_logprobs: list[float]
    cut: int
    budget: int
    refresh: str | None = None
    drift: Drift | None = None
    reuses: int = 0
    cut_limit: float = 0.0

    @property
    def full_path(self) -> bool:
        """True when nothing of a cached response is kept (init, refresh, a cut as long as the response, or a
        full-path run): the group samples whole responses."""
        return not self.prefix


def suffix_budget(setting: str | int, m: int, room: int) -> int:
    """New tokens a suffix may take: "m" (the paper's: the tokens cut), "auto" (all the ``room`` left before the
    maximum response length, so that a suffix can finish and only a response of full length is truncated), or an
    int cap; always in [1, max(room, 1)]."""
    if setting == "m":
        want = m
    elif setting == "auto":
        want = room
    elif isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1:
        want = setting
    else:
        raise ValueError(f"suffix budget must be one of {BUDGETS} or an int >= 1, got {setting!r}")
    return max(1, min(want, room))


def plan_group(entry: CacheEntry | None, truncation: TruncationConfig, cache: CacheConfig, budget: str | int,
               max_len: int, seed: int, step: int, drift: Drift | None = None,
               entropy: list[float] | None = None) -> Plan:
    """The plan of one group at ``step`` (1-based) from its question's cache ``entry`` (None: not cached yet).

    ``seed``: the group's own; the refresh draw and the cut use ``derive_seed(seed, "refresh")`` and
    ``derive_seed(seed, "cut")``. ``drift``: the entry's drift under the current policy (``rpo_train.drift``);
    ``entropy``: the current policy's next-token entropy per response token (entropy cuts)."""
    if entry is None:
        return Plan([], [], 0, max_len, "init", None, 0, truncation.initial_limit())
    reason = refresh_reason(entry, drift, cache, random.Random(derive_seed(seed, "refresh")), step)
    if reason is not None:
        return Plan([], [], 0, max_len, reason, drift, 0, entry.cut_limit)
    prefix, m = truncation.cut(entry, random.Random(derive_seed(seed, "cut")), entropy)
    if m == 0:
        prefix, m = entry.response_ids[:-1], 1
    return Plan(prefix, entry.logprobs[:len(prefix)], m, suffix_budget(budget, m, max_len - len(prefix)), None,
                drift, entry.reuses + 1, entry.cut_limit)


def update_group(cache: ExperienceCache, key: str, prompt_ids: list[int], plan: Plan, responses: list[list[int]],
                 rewards: list[float], correct: list[bool], step: int, epsilon: float, truncation: TruncationConfig,
                 rng: random.Random, logprobs: list[list[float]] | None = None) -> int:
    """The epsilon-greedy cache update of one group (responses = prefix + suffix_i) after ``step``; returns the
    index of the stored response. The question's L moves with the group (mode adaptive) unless it ran the full
    path for a refresh or init."""
    zero_variance = max(rewards) == min(rewards)
    limit = plan.cut_limit if plan.refresh else truncation.adapt(plan.cut_limit, zero_variance)
    return cache.update_from_group(key, prompt_ids, responses, rewards, correct, step, epsilon, rng,
                                   logprobs=logprobs, reuses=plan.reuses, cut_limit=limit)

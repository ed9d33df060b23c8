"""RPO's per-step logic for a trainer that owns its loop (TRL): the prefix each row samples from, the rewards'
length-aware shaping, and the cache update after scoring.

A step's rows form groups of G consecutive rows that share one question (TRL's sampler order). Every choice is drawn
from a seed derived from (run seed, step, question key), and the cache is updated from the global rows in one order,
so every process plans the same prefix for a question and keeps the same cache, even when a group spans processes.
A question with no cache entry yet runs the full path and the cache takes one of its responses (the paper's init,
done when the question is first drawn); so does a refreshed one (``cache.full_share``, ``cache.max_reuses``, or the
drift statistic ``cache.refresh_stat`` of ``rpo_train.drift`` when the trainer probes the cached responses).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..cache import CacheConfig, ExperienceCache
from ..cuts import TruncationConfig
from ..data.question import question_id
from ..drift import Drift, refresh_reason
from ..rewards import length_aware
from ..runtime.seeding import derive_seed


@dataclass(frozen=True)
class PrefixSettings:
    """``truncation``/``cache``: the rpo-train sections; ``suffix_budget``: max new tokens of a suffix (0: the cut
    m, the paper's); ``max_len``: the cap on prefix + suffix tokens (TRL's ``max_completion_length``)."""

    truncation: TruncationConfig
    cache: CacheConfig
    suffix_budget: int
    max_len: int


@dataclass(frozen=True)
class RowPlan:
    """What one row samples: ``prompt_ids + prefix`` then at most ``budget`` new tokens. ``cut``: the m tokens cut
    from the cached response (0 on the full path); ``refresh``: why the row runs the full path ("init": no entry
    yet, or ``rpo_train.drift.REASONS``), else None; ``reuses``/``cut_limit``: what the cache stores after."""

    key: str
    prefix: list[int]
    cut: int
    budget: int
    refresh: str | None
    reuses: int
    cut_limit: float


def row_key(row: dict, prompt_ids: list[int], key_column: str | None) -> str:
    """The question key of a dataset row: ``row[key_column]`` when a column is named, else a hash of the prompt's
    token ids (``rpo_train.data.question_id``, the key rpo-train uses)."""
    if key_column is None:
        return question_id(prompt_ids)
    if key_column not in row or row[key_column] is None:
        raise ValueError(f"rpo_key_column={key_column!r}: a dataset row has no such column (columns: {sorted(row)})")
    return f"{key_column}:{row[key_column]}"


def plan_row(cache: ExperienceCache, key: str, prompt_ids: list[int], s: PrefixSettings, seed: int,
             step: int, drift: Drift | None = None) -> RowPlan:
    """The plan of a row of question ``key`` at ``step`` (1-based); the same for every row of its group. ``drift``:
    the entry's drift under the current policy (``rpo_train.drift.measure``), when probed."""
    if key not in cache:
        return RowPlan(key, [], 0, s.max_len, "init", 0, s.truncation.initial_limit())
    entry = cache.get(key, prompt_ids)
    reason = refresh_reason(entry, drift, s.cache, random.Random(derive_seed(seed, step, key, "refresh")), step)
    if reason is not None:
        return RowPlan(key, [], 0, s.max_len, reason, 0, entry.cut_limit)
    prefix, m = s.truncation.cut(entry, random.Random(derive_seed(seed, step, key, "cut")))
    if m == 0:  # nothing cut: every sample would repeat the cached response
        prefix, m = entry.response_ids[:-1], 1
    budget = max(1, min(s.suffix_budget or m, s.max_len - len(prefix)))
    return RowPlan(key, prefix, m, budget, None, entry.reuses + 1, entry.cut_limit)


def groups_of(keys: list[str], group_size: int) -> list[range]:
    """The row ranges of the step's groups: blocks of ``group_size`` consecutive rows, each of one question."""
    if group_size < 1 or len(keys) % group_size:
        raise ValueError(f"{len(keys)} rows do not split into groups of {group_size}")
    blocks = [range(i, i + group_size) for i in range(0, len(keys), group_size)]
    for b in blocks:
        if len({keys[i] for i in b}) != 1:
            raise ValueError(f"rows {b.start}..{b.stop - 1} form one group but hold different questions; RPO needs "
                             "the G rows of a group to share one prompt")
    return blocks


def shape_lengths(values: list[float], lengths: list[int], group_size: int, alpha: float) -> list[float]:
    """RPO's length-aware shaping (``rpo_train.rewards.length_aware``) of one reward column, group by group; a value
    > 0 marks a correct response."""
    out: list[float] = []
    for i in range(0, len(values), group_size):
        v = values[i:i + group_size]
        out += length_aware(v, [x > 0 for x in v], lengths[i:i + group_size], alpha)
    return out


def update_cache(cache: ExperienceCache, plans: list[RowPlan], prompt_ids: list[list[int]],
                 responses: list[list[int]], rewards: list[float], correct: list[bool], group_size: int,
                 s: PrefixSettings, seed: int, step: int, writer=None) -> None:
    """The epsilon-greedy update of every group of the step's global rows (responses = prefix + suffix).

    ``writer(prompts, responses)``: the sampling policy's log-probs of each response token (one list per response),
    called once for the chosen responses; a kept prefix keeps the log-probs of its own writer (from the entry it was
    cut from), the rest gets the writer's. Without it the log-probs are unknown (NaN)."""
    chosen = []
    for block in groups_of([p.key for p in plans], group_size):
        plan = plans[block.start]
        rows = list(block)
        r = [rewards[i] for i in rows]
        zero_variance = max(r) == min(r)
        limit = plan.cut_limit if plan.refresh else s.truncation.adapt(plan.cut_limit, zero_variance)
        old = cache.entries.get(plan.key)
        kept = old.logprobs[:len(plan.prefix)] if old is not None and plan.refresh is None else []
        pick = cache.update_from_group(plan.key, prompt_ids[block.start], [responses[i] for i in rows], r,
                                       [correct[i] for i in rows], step, s.cache.epsilon,
                                       random.Random(derive_seed(seed, step, plan.key, "update")),
                                       reuses=plan.reuses, cut_limit=limit)
        chosen.append((plan.key, block.start + pick, kept))
    if writer is None or not chosen:
        return
    fresh = writer([prompt_ids[i] for _, i, _ in chosen], [responses[i] for _, i, _ in chosen])
    for (key, _, kept), logprobs in zip(chosen, fresh):
        cache.entries[key].logprobs = kept + [float(x) for x in logprobs[len(kept):]]


def step_metrics(plans: list[RowPlan], suffix_lengths: list[int], cache: ExperienceCache) -> dict[str, float]:
    """``rpo/suffix_length`` (mean tokens generated per sample), ``rpo/cut`` (mean m over the rows that cut),
    ``rpo/full_path_share`` (rows on the full path: init or refresh), ``rpo/cache_size``."""
    n = max(len(plans), 1)
    cut = [p.cut for p in plans if p.refresh is None]
    return {"rpo/suffix_length": sum(suffix_lengths) / max(len(suffix_lengths), 1),
            "rpo/cut": sum(cut) / len(cut) if cut else 0.0,
            "rpo/full_path_share": sum(p.refresh is not None for p in plans) / n,
            "rpo/cache_size": float(len(cache))}

"""RPO's step over TRL's rows: the question key of a row, the groups of a generation batch, the plans and the cache
update of a round, the round's metrics, and the run state saved in every checkpoint folder. The rules themselves
(cut, prefix, budget, refresh, update) are ``rpo_train.plan``'s, the same for rpo-train.

A round's rows form groups of G consecutive rows that share one question (TRL's sampler order). Every choice is drawn
from the group's seed, derived from (run seed, generation round, question key), and the cache is updated from the
global rows in one order, so every process plans the same prefix for a question and keeps the same cache, even when
a group spans processes. A question with no cache entry yet runs the full path and the cache takes one of its
responses (the lazy init).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..cache import CacheConfig, ExperienceCache
from ..cuts import TruncationConfig
from ..data.question import question_id
from ..drift import Drift
from ..plan import Plan, plan_group, update_group
from ..runtime.atomic import atomic_write
from ..runtime.seeding import derive_seed


@dataclass(frozen=True)
class PrefixSettings:
    """``truncation``/``cache``: the rpo-train sections; ``suffix_budget``: "auto" | "m" | an int
    (``rpo_train.plan.suffix_budget``); ``max_len``: the cap on prefix + suffix tokens (TRL's
    ``max_completion_length``)."""

    truncation: TruncationConfig
    cache: CacheConfig
    suffix_budget: str | int
    max_len: int


@dataclass
class RPOTrainerState:
    """What an RPOTrainer run carries from one generation round to the next, saved as ``rpo_state.json``.

    rounds: training generation rounds done (TRL's optimizer steps differ under ``num_iterations`` and
    ``steps_per_generation``); init_mode: the resolved ``rpo_cache_init``; init_tokens / init_s: the cache init's
    sampled tokens and seconds (eager, and lazy full-path groups); generated_tokens: every token sampled in
    training, the init's included."""

    rounds: int = 0
    init_mode: str = ""
    init_tokens: int = 0
    init_s: float = 0.0
    generated_tokens: int = 0

    def save(self, path: Path) -> None:
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(asdict(self))))

    @classmethod
    def load(cls, path: Path, rounds_if_missing: int) -> RPOTrainerState:
        """The state saved at ``path``; a file from before the round counter takes ``rounds_if_missing``."""
        saved = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in saved.items() if k in known})
        if "rounds" not in saved:
            state.rounds = rounds_if_missing
        return state


def row_key(row: dict, prompt_ids: list[int], key_column: str | None) -> str:
    """The question key of a dataset row: ``row[key_column]`` when a column is named, else a hash of the prompt's
    token ids (``rpo_train.data.question_id``, the key rpo-train uses)."""
    if key_column is None:
        return question_id(prompt_ids)
    if key_column not in row or row[key_column] is None:
        raise ValueError(f"RPOConfig.rpo_key_column={key_column!r}: a dataset row has no such column (columns: "
                         f"{sorted(row)})")
    return f"{key_column}:{row[key_column]}"


def check_key_column(dataset, key_column: str | None) -> None:
    """Refuse, before any sampling, a ``key_column`` that a map-style dataset lacks or that gives one value to two
    rows with different prompts (the cache would mix two questions)."""
    if key_column is None or not hasattr(dataset, "column_names") or not hasattr(dataset, "__len__"):
        return
    if key_column not in dataset.column_names:
        raise ValueError(f"RPOConfig.rpo_key_column={key_column!r}: the train dataset has no such column "
                         f"(columns: {dataset.column_names})")
    first: dict = {}
    for i, (value, prompt) in enumerate(zip(dataset[key_column], dataset["prompt"])):
        j = first.setdefault(repr(value), i)
        if j != i and dataset[j]["prompt"] != prompt:
            raise ValueError(f"RPOConfig.rpo_key_column={key_column!r}: rows {j} and {i} share the value {value!r} "
                             "but have different prompts; the key must identify one question")


def groups_of(keys: list[str], group_size: int) -> list[range]:
    """The row ranges of the round's groups: blocks of ``group_size`` consecutive rows, each of one question."""
    if group_size < 1 or len(keys) % group_size:
        raise ValueError(f"{len(keys)} rows do not split into groups of {group_size}")
    blocks = [range(i, i + group_size) for i in range(0, len(keys), group_size)]
    for b in blocks:
        if len({keys[i] for i in b}) != 1:
            raise ValueError(f"rows {b.start}..{b.stop - 1} form one group but hold different questions; RPO needs "
                             "the G rows of a group to share one prompt")
    return blocks


def group_seed(seed: int, round_index: int, key: str) -> int:
    """The seed of question ``key``'s group in generation round ``round_index``."""
    return derive_seed(seed, round_index, key)


def plan_rows(cache: ExperienceCache, keys: list[str], prompt_ids: list[list[int]], s: PrefixSettings, seed: int,
              round_index: int, drifts: dict[str, Drift]) -> list[Plan]:
    """One plan per row, planned once per question (``rpo_train.plan.plan_group``) and shared by its rows."""
    plans: dict[str, Plan] = {}
    for k, p in zip(keys, prompt_ids):
        entry = cache.get(k, p) if k in cache else None  # every row's prompt checked against the cached one
        if k not in plans:
            plans[k] = plan_group(entry, s.truncation, s.cache, s.suffix_budget, s.max_len,
                                  group_seed(seed, round_index, k), round_index, drifts.get(k))
    return [plans[k] for k in keys]


def update_rows(cache: ExperienceCache, keys: list[str], plans: list[Plan], prompt_ids: list[list[int]],
                responses: list[list[int]], rewards: list[float], correct: list[bool], group_size: int,
                s: PrefixSettings, seed: int, round_index: int, writer=None) -> None:
    """The cache update (``rpo_train.plan.update_group``) of every group of the round's global rows (responses =
    prefix + suffix).

    ``writer(prompts, responses)``: the sampling policy's log-probs of each response token (one list per response),
    called once for the chosen responses; a kept prefix keeps the log-probs of its own writer (from the entry it was
    cut from), the rest gets the writer's. Without it the log-probs are unknown (NaN)."""
    chosen = []
    for block in groups_of(keys, group_size):
        key, plan = keys[block.start], plans[block.start]
        old = cache.entries.get(key)
        kept = old.logprobs[:len(plan.prefix)] if old is not None and plan.refresh is None else []
        rng = random.Random(derive_seed(group_seed(seed, round_index, key), "cache"))
        pick = update_group(cache, key, prompt_ids[block.start], plan, [responses[i] for i in block],
                            [rewards[i] for i in block], [correct[i] for i in block], round_index, s.cache.epsilon,
                            s.truncation, rng)
        chosen.append((key, block.start + pick, kept))
    if writer is None or not chosen:
        return
    fresh = writer([prompt_ids[i] for _, i, _ in chosen], [responses[i] for _, i, _ in chosen])
    for (key, _, kept), logprobs in zip(chosen, fresh):
        cache.entries[key].logprobs = kept + [float(x) for x in logprobs[len(kept):]]


def round_metrics(plans: list[Plan], suffix_lengths: list[int], cache: ExperienceCache) -> dict[str, float]:
    """``rpo/suffix_length`` (mean tokens generated per sample), ``rpo/cut`` (mean m over the rows that kept a
    prefix), ``rpo/full_path_share`` (rows that sampled whole responses: init, refresh, or a cut as long as the
    response), ``rpo/cache_size``."""
    n = max(len(plans), 1)
    cut = [p.cut for p in plans if not p.full_path]
    return {"rpo/suffix_length": sum(suffix_lengths) / max(len(suffix_lengths), 1),
            "rpo/cut": sum(cut) / len(cut) if cut else 0.0,
            "rpo/full_path_share": sum(p.full_path for p in plans) / n,
            "rpo/cache_size": float(len(cache))}

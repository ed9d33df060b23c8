"""One rollout phase of the RPO loop: cut cached responses, sample G suffixes per question, score the groups.

``rollout: full`` samples whole responses from the prompt (the GRPO/DAPO baseline) through the same code. Every
group's randomness (its cut, its G samples, its cache update) comes from its own seed, derived from the run seed, the
step, the dynamic-sampling round and the question's place in the global batch, so a group is the same whichever
rank samples it and whatever else shares the engine call.

``sample_and_score`` is the one "decode, then score" path from an engine call to rewards, shared by the groups, the
cache init (``rpo_train.cache_init``), evaluation (``rpo_train.trainer``) and the segment analysis
(``rpo_train.analyze``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .cache import ExperienceCache
from .config import RunConfig
from .data import Question
from .drift import Drift, drift_metrics, measure, refresh_reason
from .objectives import group_advantages
from .rewards import RewardFn, length_aware, overlong_penalty
from .rollout.interface import Completion, RolloutEngine
from .rollout.params import SamplingParams
from .runtime.distributed import DistContext
from .runtime.seeding import derive_seed


@dataclass(frozen=True)
class Scored:
    """One sampled completion and its verdict.

    completion: the engine's ``Completion`` (suffix token ids, the sampler's fp32 log-probs, finish reason). text:
    prefix + completion decoded with special tokens skipped. reward, correct: ``reward_fn(question, text)``.
    """

    completion: Completion
    text: str
    reward: float
    correct: bool


def sample_and_score(engine: RolloutEngine, questions: Sequence[Question], params: SamplingParams, tokenizer,
                     reward_fn: RewardFn, *, prefixes: Sequence[Sequence[int]] | None = None,
                     n: int = 1) -> list[list[Scored]]:
    """Sample ``n`` completions of each ``questions[i].prompt_ids + prefixes[i]`` under ``params`` in one
    ``engine.generate`` call, decode each with its prefix and score it with ``reward_fn(questions[i], text)``.

    Returns one list of ``n`` ``Scored`` per question, in the engine's order (the same tokens as
    ``engine.generate`` with the same arguments). No questions: no engine call, an empty list.
    """
    if not questions:
        return []
    out = engine.generate([q.prompt_ids for q in questions], prefixes=prefixes, n=n, params=params)
    heads = [[]] * len(questions) if prefixes is None else [list(p) for p in prefixes]
    scored = []
    for q, head, comps in zip(questions, heads, out):
        group = []
        for c in comps:
            text = tokenizer.decode(head + list(c.token_ids), skip_special_tokens=True)
            result = reward_fn(q, text)
            group.append(Scored(c, text, float(result.reward), bool(result.correct)))
        scored.append(group)
    return scored


@dataclass
class Group:
    """The G scored responses to one question. responses = prefix + suffix_i (token ids, prompt excluded); ``cut`` =
    the m tokens cut from the end of the cached response (0 on the full path). ``logprobs`` per response: the
    writers' log-probs of the kept prefix (from the cache) + the sampler's of the suffix. ``refresh``: why the group
    ran the full path in an RPO run (``rpo_train.drift.REASONS``), else None; ``drift``: its entry's drift before
    the step; ``reuses``/``cut_limit``: what the cache stores with the group's chosen response; ``init``: (tokens
    sampled, response length) of its question's lazy cache init at this step (``rpo_train.cache_init``), else
    None."""

    question: Question
    prefix_ids: list[int]
    cut: int
    suffixes: list[list[int]]
    rewards: list[float]
    correct: list[bool]
    seed: int = 0
    prefix_logprobs: list[float] = field(default_factory=list)
    suffix_logprobs: list[list[float]] = field(default_factory=list)
    refresh: str | None = None
    drift: Drift | None = None
    reuses: int = 0
    cut_limit: float = 0.0
    init: tuple[int, int] | None = None

    @property
    def qid(self) -> str:
        return self.question.qid

    @property
    def prompt_ids(self) -> list[int]:
        return self.question.prompt_ids

    @property
    def responses(self) -> list[list[int]]:
        return [self.prefix_ids + s for s in self.suffixes]

    @property
    def logprobs(self) -> list[list[float]]:
        return [self.prefix_logprobs + s for s in self.suffix_logprobs]

    @property
    def zero_variance(self) -> bool:
        return len(set(self.rewards)) == 1


@dataclass
class GroupPlan:
    """What one group samples: ``prefix`` (with its writers' log-probs), the cut m, the suffix budget, and the
    cache bookkeeping that goes with it (see ``Group``)."""

    prefix: list[int]
    prefix_logprobs: list[float]
    cut: int
    budget: int
    refresh: str | None = None
    drift: Drift | None = None
    reuses: int = 0
    cut_limit: float = 0.0


def plan_prefixes(questions: list[Question], cache: ExperienceCache, cfg: RunConfig, seeds: list[int],
                  probes: list[tuple[list[float], list[float]]] | None = None, step: int = 1) -> list[GroupPlan]:
    """The plan of each question at ``step`` (1-based), question i cut with its seed ``seeds[i]``. ``probes[i]``:
    the current policy's (log-probs, entropies) of question i's cached response
    (``rpo_train.model.policy.response_logprobs``), which measure its drift and place entropy cuts. A refreshed
    entry's group runs the full path. m = 0 is raised to 1: with nothing cut, every sample would repeat the cached
    response and the group would carry no signal."""
    plans = []
    full_budget = cfg.rollout.max_response_len
    for i, (q, seed) in enumerate(zip(questions, seeds)):
        if cfg.objective.rollout == "full":
            plans.append(GroupPlan([], [], 0, full_budget))
            continue
        entry = cache.get(q.qid, q.prompt_ids)
        now, entropy = probes[i] if probes is not None else (None, None)
        drift = measure(entry.logprobs, now) if now is not None else None
        reason = refresh_reason(entry, drift, cfg.cache, random.Random(derive_seed(seed, "refresh")), step)
        if reason is not None:
            plans.append(GroupPlan([], [], 0, full_budget, reason, drift, 0, entry.cut_limit))
            continue
        prefix, m = cfg.truncation.cut(entry, random.Random(derive_seed(seed, "cut")), entropy)
        if m == 0:
            prefix, m = entry.response_ids[:-1], 1
        budget = m if cfg.rollout.suffix_budget == "m" else cfg.rollout.suffix_budget
        budget = max(1, min(budget, full_budget - len(prefix)))
        plans.append(GroupPlan(prefix, entry.logprobs[:len(prefix)], m, budget, None, drift, entry.reuses + 1,
                               entry.cut_limit))
    return plans


def shaped_group(question: Question, plan: GroupPlan, scored: list[Scored], cfg: RunConfig) -> Group:
    """One group from its scored samples (correctness on the decoded full response, ``sample_and_score``), with
    length-aware and overlong shaping applied to the rewards."""
    prefix = plan.prefix
    suffixes = [list(s.completion.token_ids) for s in scored]
    rewards, correct = [s.reward for s in scored], [s.correct for s in scored]
    lengths = [len(prefix) + len(s) for s in suffixes]
    if cfg.objective.length_aware:
        rewards = length_aware(rewards, correct, lengths, cfg.objective.length_alpha)
    if cfg.objective.overlong_buffer:
        rewards = [r + overlong_penalty(n, cfg.rollout.max_response_len, cfg.objective.overlong_buffer,
                                        cfg.objective.overlong_factor) for r, n in zip(rewards, lengths)]
    if any(r != r for r in rewards):
        raise ValueError(f"question {question.id!r}: a reward is NaN; check the reward function")
    return Group(question, prefix, plan.cut, suffixes, rewards, correct,
                 prefix_logprobs=plan.prefix_logprobs, suffix_logprobs=[list(s.completion.logprobs) for s in scored],
                 refresh=plan.refresh, drift=plan.drift, reuses=plan.reuses, cut_limit=plan.cut_limit)


def rollout_groups(engine, questions: list[Question], cache: ExperienceCache, cfg: RunConfig, tokenizer,
                   reward_fn: RewardFn, seeds: list[int], stop_ids: list[int], probe=None,
                   step: int = 1) -> list[Group]:
    """Sample and score one group per question, question i from ``seeds[i]`` (prefix KV of each group computed once,
    under the current weights). ``probe(prompts, responses)`` (an RPO run's drift probe) reads the questions' cached
    responses under the current policy first; it is called even with no questions, so that sharded layers meet on
    every rank."""
    probes = None
    if cfg.objective.rollout == "rpo" and probe is not None:
        entries = [cache.get(q.qid, q.prompt_ids) for q in questions]
        probes = probe([e.prompt_ids for e in entries], [e.response_ids for e in entries])
    if not questions:
        return []
    plans = plan_prefixes(questions, cache, cfg, seeds, probes, step)
    params = cfg.rollout.sampling_params([p.budget for p in plans], seed=[derive_seed(s, "sample") for s in seeds],
                                         stop_token_ids=stop_ids)
    out = sample_and_score(engine, questions, params, tokenizer, reward_fn, prefixes=[p.prefix for p in plans],
                           n=cfg.rollout.group_size)
    groups = [shaped_group(q, p, scored, cfg) for q, p, scored in zip(questions, plans, out)]
    for g, s in zip(groups, seeds):
        g.seed = s
    return groups


def collect_groups(next_questions, rollout, cfg: RunConfig, dist: DistContext,
                   step_seed: int) -> tuple[list[Group], list[Group]]:
    """(groups to train on, all groups rolled out) of one step, both global and in the same order on every rank.

    ``next_questions(k)`` gives the next k questions of the data order (the same on every rank);
    ``rollout(questions, seeds)`` samples and scores questions on this rank. Each round, every rank rolls out its
    share of the round's questions and the groups are gathered. With dynamic sampling, zero-variance groups are
    dropped and further rounds refill the GLOBAL batch to ``batch_questions`` groups (at most
    ``max_resample_rounds`` more rounds).
    """
    want = cfg.batch_questions
    rolled: list[Group] = []
    kept: list[Group] = []
    rounds = 1 + (cfg.objective.max_resample_rounds if cfg.objective.dynamic_sampling else 0)
    for round_index in range(rounds):
        questions = next_questions(want - len(kept))
        seeds = [derive_seed(step_seed, round_index, i) for i in range(len(questions))]
        mine = dist.share(list(range(len(questions))))
        local = rollout([questions[i] for i in mine], [seeds[i] for i in mine])
        groups = [g for part in dist.gather(local) for g in part]
        rolled += groups
        kept += [g for g in groups if not (cfg.objective.dynamic_sampling and g.zero_variance)]
        if len(kept) >= want:
            break
    return kept[:want], rolled


def rollout_stats(kept: list[Group], rolled: list[Group], cfg: RunConfig) -> dict[str, float]:
    """The health metrics of one step's rollout: tokens, lengths, zero-variance share, rewards, and in an RPO run the
    drift of the entries cut and the refreshes (``rpo_train.drift.drift_metrics``)."""
    gen = [len(s) for g in rolled for s in g.suffixes]
    stats = {"rollout/generated_tokens": float(sum(gen)), "rollout/suffix_len": sum(gen) / max(len(gen), 1),
             "rollout/prefix_len": sum(len(g.prefix_ids) for g in rolled) / len(rolled),
             "rollout/cut_len": sum(g.cut for g in rolled) / len(rolled),
             "rollout/response_len": sum(len(r) for g in rolled for r in g.responses) / max(len(gen), 1),
             "rollout/zero_variance_share": sum(g.zero_variance for g in rolled) / len(rolled),
             "reward/mean": sum(r for g in rolled for r in g.rewards) / max(len(gen), 1),
             "reward/accuracy": sum(c for g in rolled for c in g.correct) / max(len(gen), 1),
             "rollout/groups": float(len(rolled)), "rollout/groups_trained": float(len(kept))}
    if cfg.objective.rollout == "rpo":
        stats.update(drift_metrics([g.drift for g in rolled], [g.refresh for g in rolled]))
        if cfg.truncation.mode == "adaptive":
            stats["rollout/cut_limit_mean"] = sum(g.cut_limit for g in rolled) / len(rolled)
    return stats


def advantages_of(groups: list[Group], eps: float) -> torch.Tensor:
    """[len(groups), G] group-normalised advantages."""
    return group_advantages(torch.tensor([g.rewards for g in groups], dtype=torch.float32), eps=eps)

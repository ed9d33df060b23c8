"""One rollout phase of the RPO loop: cut cached responses, sample G suffixes per question, score the groups.

``objective.mode: full`` samples whole responses from the prompt (the GRPO/DAPO baseline) through the same code. Every
group's randomness (its cut, its G samples, its cache update) comes from its own seed, derived from the run seed, the
step, the dynamic-sampling round and the question's place in the global batch, so a group is the same whichever
rank samples it and whatever else shares the engine call.

``sample_and_score`` is the one "decode, then score" path from an engine call to rewards, shared by the groups, the
cache init (``rpo_train.cache_init``), evaluation (``rpo_train.trainer``) and the segment analysis
(``rpo_train.analyze``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .cache import ExperienceCache
from .config import RunConfig
from .data import Question
from .drift import Drift, drift_metrics, measure
from .objectives import group_advantages
from .plan import Plan, plan_group
from .rewards import RewardFn, length_aware, overlong_penalty
from .rollout.interface import Completion, RolloutEngine
from .rollout.params import SamplingParams
from .runtime.distributed import DistContext
from .runtime.finite import NonFiniteError
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
    ``engine.generate`` with the same arguments). No questions: no engine call, an empty list. A reward that is NaN
    or inf is a ``NonFiniteError`` naming the question.
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
            if not math.isfinite(float(result.reward)):
                raise NonFiniteError(f"question {q.id!r}: the reward function returned {result.reward} for the "
                                     f"response {text[:60]!r}; it must return finite numbers")
            group.append(Scored(c, text, float(result.reward), bool(result.correct)))
        scored.append(group)
    return scored


@dataclass
class Group:
    """The G scored responses to one question, sampled under ``plan`` (``rpo_train.plan.Plan``: the kept prefix, the
    cut m, the refresh reason, the entry's drift, what the cache stores after). responses = prefix + suffix_i (token
    ids, prompt excluded). ``logprobs`` per response: the writers' log-probs of the kept prefix (from the cache) + the
    sampler's of the suffix. ``init``: (tokens sampled, response length) of its question's lazy cache init at this
    step (``rpo_train.cache_init``), else None."""

    question: Question
    plan: Plan
    suffixes: list[list[int]]
    rewards: list[float]
    correct: list[bool]
    seed: int = 0
    suffix_logprobs: list[list[float]] = field(default_factory=list)
    init: tuple[int, int] | None = None

    @property
    def prefix_ids(self) -> list[int]:
        return self.plan.prefix

    @property
    def prefix_logprobs(self) -> list[float]:
        return self.plan.prefix_logprobs

    @property
    def cut(self) -> int:
        return self.plan.cut

    @property
    def refresh(self) -> str | None:
        return self.plan.refresh

    @property
    def drift(self) -> Drift | None:
        return self.plan.drift

    @property
    def cut_limit(self) -> float:
        return self.plan.cut_limit

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


def plan_prefixes(questions: list[Question], cache: ExperienceCache, cfg: RunConfig, seeds: list[int],
                  probes: list[tuple[list[float], list[float]]] | None = None, step: int = 1) -> list[Plan]:
    """The plan of each question at ``step`` (1-based), question i from its seed ``seeds[i]``
    (``rpo_train.plan.plan_group``). ``probes[i]``: the current policy's (log-probs, entropies) of question i's
    cached response (``rpo_train.model.policy.response_logprobs``), which measure its drift and place entropy cuts.
    A full-path run plans every group with an empty prefix."""
    full_budget = cfg.rollout.max_response_len
    if cfg.objective.mode == "full":
        return [Plan([], [], 0, full_budget) for _ in questions]
    plans = []
    for i, (q, seed) in enumerate(zip(questions, seeds)):
        entry = cache.get(q.qid, q.prompt_ids)
        now, entropy = probes[i] if probes is not None else (None, None)
        drift = measure(entry.logprobs, now) if now is not None else None
        plans.append(plan_group(entry, cfg.truncation, cfg.cache, cfg.rollout.suffix_budget, full_budget, seed, step,
                                drift, entropy))
    return plans


def shaped_group(question: Question, plan: Plan, scored: list[Scored], cfg: RunConfig) -> Group:
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
    return Group(question, plan, suffixes, rewards, correct,
                 suffix_logprobs=[list(s.completion.logprobs) for s in scored])


def rollout_groups(engine, questions: list[Question], cache: ExperienceCache, cfg: RunConfig, tokenizer,
                   reward_fn: RewardFn, seeds: list[int], stop_ids: list[int], probe=None,
                   step: int = 1) -> list[Group]:
    """Sample and score one group per question, question i from ``seeds[i]`` (prefix KV of each group computed once,
    under the current weights). ``probe(prompts, responses)`` (an RPO run's drift probe) reads the questions' cached
    responses under the current policy first; it is called even with no questions, so that sharded layers meet on
    every rank."""
    probes = None
    if cfg.objective.mode == "rpo" and probe is not None:
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
    if cfg.objective.mode == "rpo":
        stats.update(drift_metrics([g.drift for g in rolled], [g.refresh for g in rolled]))
        if cfg.truncation.mode == "adaptive":
            stats["rollout/cut_limit_mean"] = sum(g.cut_limit for g in rolled) / len(rolled)
    return stats


def advantages_of(groups: list[Group], eps: float) -> torch.Tensor:
    """[len(groups), G] group-normalised advantages."""
    return group_advantages(torch.tensor([g.rewards for g in groups], dtype=torch.float32), eps=eps)

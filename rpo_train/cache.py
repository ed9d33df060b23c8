"""The experience cache of RPO: one response per training question, truncated from the end to make the prefix.

One entry per question id (``rpo_train.data.question_id``: a hash of the prompt's token ids; the prompt is stored
and checked on every hit). Token ids are stored, never text, so the cut never changes token boundaries. The cache is
saved as one safetensors file (flat token arrays + offsets, per-entry scalars; question ids in the metadata), written
atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .runtime.atomic import atomic_write
from .runtime.errors import UsageError, check_types, one_line

FORMAT = "rpo-experience-cache/2"
OLD_FORMATS = ("rpo-experience-cache/1",)  # read with unknown writer log-probs (NaN) and no reuses


@dataclass
class CacheEntry:
    """One cached response.

    ``logprobs`` [len(response_ids)]: each token's log-probability under the policy that wrote it (the sampler's, at
    the rollout temperature; NaN where unknown), kept with the token when a later group keeps it in its prefix.
    ``reuses``: groups that re-used a prefix of this body since a full-path rollout wrote it (0 after init or a
    refresh). ``group_min_len``: the shortest full response of the question's last group. ``cut_limit``: the
    question's L under ``truncation.mode: adaptive``.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    reward: float
    correct: bool
    step: int
    group_min_len: int
    logprobs: list[float] = field(default_factory=list)
    reuses: int = 0
    cut_limit: float = 0.0

    def __post_init__(self):
        if not self.logprobs:
            self.logprobs = [float("nan")] * len(self.response_ids)
        if len(self.logprobs) != len(self.response_ids):
            raise ValueError(f"CacheEntry: {len(self.response_ids)} response ids but {len(self.logprobs)} logprobs")

    @property
    def length(self) -> int:
        return len(self.response_ids)


DRIFT_STATS = ("kl", "m2", "flips", "drop")
INITS = ("auto", "eager", "lazy")


@dataclass(frozen=True)
class CacheConfig:
    """The ``cache:`` section: the paper's cache, and the guard against drift of its kept prefixes.

    - ``epsilon``: after each step a question's entry becomes its group's best response with this probability, else
      a random one (0.5 in the paper);
    - ``init``: when each question's first response is sampled: eager (all before step 1, the paper's), lazy (when the
      question is first drawn), auto (lazy when the run draws fewer questions than the data holds;
      ``rpo_train.cache_init``); ``init_path``: start from a saved cache instead of sampling one;
      ``resample_no_answer`` = k: at the init, a response without a final answer is sampled again, up to k times;
    - the refresh (``rpo_train.drift``): a question's group runs the full path from its prompt (a fresh response
      from the current policy, which the cache then takes) when its entry's drift statistic ``refresh_stat`` ("kl":
      mean log p_writer - log p_now over the body, an estimate of KL(writer || now); "m2": mean squared log-ratio,
      M2PO's second moment; "flips": tokens written with p > 0.9 that the current policy gives p < 0.5; "drop": the
      largest fall of one token's log-prob, in nats) reaches
      ``refresh_drift`` (0: off), when its body has been re-used ``max_reuses`` times
      (0: off), and for a random ``full_share`` of the groups (Kimi k1.5's mix of fresh and partial rollouts),
      drawn on every ``refresh_every``-th step only, ``refresh_every`` times as often: a full-path group makes its
      whole step wait for a full-length decode, so batching the share into fewer steps pays that wait less often;
    - ``probe_every`` = k: the drift probe (the current policy's log-probs of the cut entries, a forward over them)
      runs on steps 1, 1 + k, 1 + 2k, ... only, and its drift metrics are logged there; on every step when a drift
      refresh or entropy cuts read it (``probes_at``).
    """

    epsilon: float = 0.5
    init: str = "auto"
    init_path: str | None = None
    resample_no_answer: int = 0
    refresh_stat: str = "m2"
    refresh_drift: float = 0.0
    max_reuses: int = 0
    full_share: float = 0.0
    refresh_every: int = 1
    probe_every: int = 1

    def __post_init__(self):
        check_types(self, "cache")
        for name in ("refresh_every", "probe_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"cache.{name} must be an int >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise UsageError(f"cache.epsilon must be in [0, 1], got {self.epsilon}")
        if self.resample_no_answer < 0 or self.max_reuses < 0:
            raise UsageError(f"cache.resample_no_answer and cache.max_reuses must be ints >= 0, got "
                             f"{self.resample_no_answer}, {self.max_reuses}")
        if self.init not in INITS:
            raise UsageError(f"cache.init must be one of {INITS}, got {self.init!r}")
        if self.refresh_stat not in DRIFT_STATS:
            raise UsageError(f"cache.refresh_stat must be one of {DRIFT_STATS}, got {self.refresh_stat!r}")
        if self.refresh_drift < 0:
            raise UsageError(f"cache.refresh_drift must be >= 0 (0 turns it off), got {self.refresh_drift}")
        if not 0.0 <= self.full_share <= 1.0:
            raise UsageError(f"cache.full_share must be in [0, 1], got {self.full_share}")

    def probes_at(self, step: int, entropy_cuts: bool = False) -> bool:
        """Whether step ``step`` (1-based) runs the drift probe: always when a drift refresh or ``entropy_cuts`` read
        it, else on every ``probe_every``-th step from the first."""
        return self.refresh_drift > 0 or entropy_cuts or (step - 1) % self.probe_every == 0

    @property
    def refreshes(self) -> bool:
        return bool(self.refresh_drift or self.max_reuses or self.full_share)


@dataclass
class ExperienceCache:
    """question id -> CacheEntry, persisted crash-safely with ``save``/``load``."""

    entries: dict[str, CacheEntry] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, qid: str) -> bool:
        return qid in self.entries

    def get(self, qid: str, prompt_ids: list[int]) -> CacheEntry:
        """The entry of ``qid``; raises KeyError when absent, ValueError when its stored prompt differs."""
        if qid not in self.entries:
            raise KeyError(f"experience cache has no entry for question id {qid!r}; initialise the cache first")
        entry = self.entries[qid]
        if entry.prompt_ids != list(prompt_ids):
            raise UsageError(f"question id {qid!r}: the cached prompt differs from the one given (id collision or a "
                             f"changed dataset/tokenizer)")
        return entry

    def put(self, qid: str, prompt_ids: list[int], response_ids: list[int], *, reward: float, correct: bool,
            step: int, group_min_len: int | None = None, logprobs: list[float] | None = None, reuses: int = 0,
            cut_limit: float = 0.0) -> None:
        """Store (overwrite) the response of ``qid`` (``logprobs``: its writers' log-probs, NaN when unknown)."""
        if reward != reward:
            raise ValueError(f"question id {qid!r}: reward is NaN")
        response_ids = [int(t) for t in response_ids]
        self.entries[qid] = CacheEntry([int(t) for t in prompt_ids], response_ids, float(reward), bool(correct),
                                       int(step), len(response_ids) if group_min_len is None else int(group_min_len),
                                       [float(x) for x in logprobs or []], int(reuses), float(cut_limit))

    def update_from_group(self, qid: str, prompt_ids: list[int], responses: list[list[int]], rewards: list[float],
                          correct: list[bool], step: int, epsilon: float, rng: random.Random, *,
                          logprobs: list[list[float]] | None = None, reuses: int = 0,
                          cut_limit: float = 0.0) -> int:
        """Epsilon-greedy update after an optimisation step; returns the index of the stored response.

        With probability ``epsilon`` the best response (highest reward, ties broken at random), else a uniformly
        random one of the group. ``group_min_len`` becomes the group's shortest response; ``logprobs`` (one list
        per response), ``reuses`` and ``cut_limit`` are stored with it.
        """
        if not responses or not (len(responses) == len(rewards) == len(correct)):
            raise ValueError(f"question id {qid!r}: responses, rewards and correct must be equal, non-empty lists")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"argument 'epsilon' must be in [0, 1], got {epsilon}")
        if rng.random() < epsilon:
            best = max(rewards)
            pick = rng.choice([i for i, r in enumerate(rewards) if r == best])
        else:
            pick = rng.randrange(len(responses))
        self.put(qid, prompt_ids, responses[pick], reward=rewards[pick], correct=correct[pick], step=step,
                 group_min_len=min(len(r) for r in responses), logprobs=logprobs[pick] if logprobs else None,
                 reuses=reuses, cut_limit=cut_limit)
        return pick

    def digest(self) -> str:
        """A hash of every entry (order-independent): equal digests mean equal caches, e.g. across ranks."""
        h = hashlib.blake2b(digest_size=16)
        for qid in sorted(self.entries):
            e = self.entries[qid]
            h.update(repr((qid, e.prompt_ids, e.response_ids, e.reward, e.correct, e.step, e.group_min_len,
                           e.logprobs, e.reuses, e.cut_limit)).encode())
        return h.hexdigest()

    def metrics(self, step: int) -> dict[str, float]:
        """Mean length, share of correct entries, mean age (steps since written) and mean body reuses."""
        n = max(len(self.entries), 1)
        values = list(self.entries.values())
        return {"cache/mean_length": sum(e.length for e in values) / n,
                "cache/correct_share": sum(e.correct for e in values) / n,
                "cache/mean_age": sum(step - e.step for e in values) / n,
                "cache/mean_reuses": sum(e.reuses for e in values) / n,
                "cache/entries": float(len(values))}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the cache to ``path`` (safetensors) atomically."""
        qids = list(self.entries)
        values = [self.entries[q] for q in qids]

        def flat(lists, dtype=torch.int64):
            offsets = torch.tensor([0] + [len(x) for x in lists], dtype=torch.int64).cumsum(0)
            data = torch.tensor([t for x in lists for t in x], dtype=dtype)
            return data, offsets

        prompts, prompt_off = flat([e.prompt_ids for e in values])
        responses, response_off = flat([e.response_ids for e in values])
        logprobs, _ = flat([e.logprobs for e in values], torch.float64)
        tensors = {"prompt_ids": prompts, "prompt_offsets": prompt_off, "response_ids": responses,
                   "response_offsets": response_off, "logprobs": logprobs,
                   "reward": torch.tensor([e.reward for e in values], dtype=torch.float64),
                   "correct": torch.tensor([e.correct for e in values], dtype=torch.uint8),
                   "step": torch.tensor([e.step for e in values], dtype=torch.int64),
                   "group_min_len": torch.tensor([e.group_min_len for e in values], dtype=torch.int64),
                   "reuses": torch.tensor([e.reuses for e in values], dtype=torch.int64),
                   "cut_limit": torch.tensor([e.cut_limit for e in values], dtype=torch.float64)}
        meta = {"format": FORMAT, "qids": json.dumps(qids)}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ExperienceCache:
        """Read a cache written by ``save`` (or by the previous format); clear errors for a missing or foreign
        file."""
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"experience cache file not found: {path}")
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            t = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - any failure to parse the user's file is reported with its path
            raise UsageError(f"experience cache {path}: not a readable safetensors file ({one_line(exc)})") from exc
        if meta.get("format") not in (FORMAT, *OLD_FORMATS):
            raise UsageError(f"{path} is not an rpo experience cache (format {meta.get('format')!r}, "
                             f"expected {FORMAT!r})")
        qids = json.loads(meta["qids"])

        def split(data, offsets):
            off = offsets.tolist()
            flat = data.tolist()
            return [flat[off[i]:off[i + 1]] for i in range(len(off) - 1)]

        prompts = split(t["prompt_ids"], t["prompt_offsets"])
        responses = split(t["response_ids"], t["response_offsets"])
        n = len(qids)
        logprobs = split(t["logprobs"], t["response_offsets"]) if "logprobs" in t else [[]] * n
        reuses = t["reuses"].tolist() if "reuses" in t else [0] * n
        limits = t["cut_limit"].tolist() if "cut_limit" in t else [0.0] * n
        entries = {q: CacheEntry(prompts[i], responses[i], float(t["reward"][i]), bool(t["correct"][i]),
                                 int(t["step"][i]), int(t["group_min_len"][i]), logprobs[i], int(reuses[i]),
                                 float(limits[i])) for i, q in enumerate(qids)}
        return cls(entries)

"""The experience cache of RPO: one response per training question, truncated from the end to make the prefix.

One entry per question id (a hash of the prompt's token ids; the prompt is stored and checked on every hit). Token ids
are stored, never text, so the cut never changes token boundaries. The cache is saved as one safetensors file
(flat token arrays + offsets, per-entry scalars; question ids in the metadata), written atomically.
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

from .atomic import atomic_write
from .errors import UsageError, check_types, one_line

FORMAT = "rpo-experience-cache/1"
TRUNCATION_MODES = ("fixed", "dynamic")


def question_id(prompt_ids: list[int]) -> str:
    """Stable id of a question: sha1 of its prompt token ids."""
    return hashlib.sha1(json.dumps(list(map(int, prompt_ids))).encode()).hexdigest()[:20]


@dataclass
class CacheEntry:
    """One cached response. ``group_min_len`` is the shortest full response of the question's last group."""

    prompt_ids: list[int]
    response_ids: list[int]
    reward: float
    correct: bool
    step: int
    group_min_len: int

    @property
    def length(self) -> int:
        return len(self.response_ids)


@dataclass(frozen=True)
class TruncationConfig:
    """How many tokens m ~ U{0..L} to cut from the end of a cached response.

    mode "fixed": L = ``max_cut``. mode "dynamic": L = ``factor`` * l, l = the shortest response of the question's
    last group (its cached length before the first update). ``factor`` is 0.5 or 1.0 in the paper.
    """

    mode: str = "fixed"
    max_cut: int = 300
    factor: float = 0.5

    def __post_init__(self):
        check_types(self, "truncation")
        if self.mode not in TRUNCATION_MODES:
            raise UsageError(f"truncation.mode must be one of {TRUNCATION_MODES}, got {self.mode!r}")
        if not isinstance(self.max_cut, int) or self.max_cut < 0:
            raise UsageError(f"truncation.max_cut must be an int >= 0, got {self.max_cut!r}")
        if not 0.0 < self.factor <= 1.0:
            raise UsageError(f"truncation.factor must be in (0, 1], got {self.factor!r}")

    def limit(self, entry: CacheEntry) -> int:
        """L for this entry."""
        if self.mode == "fixed":
            return self.max_cut
        return int(self.factor * entry.group_min_len)

    def cut(self, entry: CacheEntry, rng: random.Random) -> tuple[list[int], int]:
        """(prefix, m): m ~ U{0..L}, prefix = response minus its last m tokens (empty when m >= its length)."""
        m = rng.randint(0, self.limit(entry))
        keep = max(entry.length - m, 0)
        return entry.response_ids[:keep], m


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
            step: int, group_min_len: int | None = None) -> None:
        """Store (overwrite) the response of ``qid``."""
        if reward != reward:
            raise ValueError(f"question id {qid!r}: reward is NaN")
        response_ids = [int(t) for t in response_ids]
        self.entries[qid] = CacheEntry([int(t) for t in prompt_ids], response_ids, float(reward), bool(correct),
                                       int(step), len(response_ids) if group_min_len is None else int(group_min_len))

    def update_from_group(self, qid: str, prompt_ids: list[int], responses: list[list[int]], rewards: list[float],
                          correct: list[bool], step: int, epsilon: float, rng: random.Random) -> int:
        """Epsilon-greedy update after an optimisation step; returns the index of the stored response.

        With probability ``epsilon`` the best response (highest reward, ties broken at random), else a uniformly
        random one of the group. ``group_min_len`` becomes the group's shortest response.
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
                 group_min_len=min(len(r) for r in responses))
        return pick

    def digest(self) -> str:
        """A hash of every entry (order-independent): equal digests mean equal caches, e.g. across ranks."""
        h = hashlib.blake2b(digest_size=16)
        for qid in sorted(self.entries):
            e = self.entries[qid]
            h.update(repr((qid, e.prompt_ids, e.response_ids, e.reward, e.correct, e.step, e.group_min_len)).encode())
        return h.hexdigest()

    def metrics(self, step: int) -> dict[str, float]:
        """Mean length, share of correct entries and mean age (steps since written)."""
        n = max(len(self.entries), 1)
        values = list(self.entries.values())
        return {"cache/mean_length": sum(e.length for e in values) / n,
                "cache/correct_share": sum(e.correct for e in values) / n,
                "cache/mean_age": sum(step - e.step for e in values) / n,
                "cache/entries": float(len(values))}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the cache to ``path`` (safetensors) atomically."""
        qids = list(self.entries)
        values = [self.entries[q] for q in qids]

        def flat(lists):
            offsets = torch.tensor([0] + [len(x) for x in lists], dtype=torch.int64).cumsum(0)
            data = torch.tensor([t for x in lists for t in x], dtype=torch.int64)
            return data, offsets

        prompts, prompt_off = flat([e.prompt_ids for e in values])
        responses, response_off = flat([e.response_ids for e in values])
        tensors = {"prompt_ids": prompts, "prompt_offsets": prompt_off, "response_ids": responses,
                   "response_offsets": response_off,
                   "reward": torch.tensor([e.reward for e in values], dtype=torch.float64),
                   "correct": torch.tensor([e.correct for e in values], dtype=torch.uint8),
                   "step": torch.tensor([e.step for e in values], dtype=torch.int64),
                   "group_min_len": torch.tensor([e.group_min_len for e in values], dtype=torch.int64)}
        meta = {"format": FORMAT, "qids": json.dumps(qids)}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ExperienceCache:
        """Read a cache written by ``save``; clear errors for a missing or foreign file."""
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
        if meta.get("format") != FORMAT:
            raise UsageError(f"{path} is not an rpo experience cache (format {meta.get('format')!r}, "
                             f"expected {FORMAT!r})")
        qids = json.loads(meta["qids"])

        def split(data, offsets):
            off = offsets.tolist()
            flat = data.tolist()
            return [flat[off[i]:off[i + 1]] for i in range(len(off) - 1)]

        prompts = split(t["prompt_ids"], t["prompt_offsets"])
        responses = split(t["response_ids"], t["response_offsets"])
        entries = {q: CacheEntry(prompts[i], responses[i], float(t["reward"][i]), bool(t["correct"][i]),
                                 int(t["step"][i]), int(t["group_min_len"][i])) for i, q in enumerate(qids)}
        return cls(entries)

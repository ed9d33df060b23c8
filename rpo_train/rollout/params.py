"""``SamplingParams``: how one ``generate`` call samples, built once by the caller and passed whole to any engine."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def token_ids(name: str, value, *, allow_empty: bool) -> tuple[int, ...]:
    """``value`` (a list, tuple, 1-D tensor or array of ints) as a tuple of plain ints >= 0; TypeError/ValueError
    naming ``name`` otherwise. The vocabulary bound is the engine's to check (``normalize_requests``)."""
    array = isinstance(value, torch.Tensor) or type(value).__name__ == "ndarray"
    if isinstance(value, (str, bytes)) or not (isinstance(value, Sequence) or array):
        raise TypeError(f"{name} must be a list of token ids, got {type(value).__name__}")
    ids = value.tolist() if array else list(value)
    if not ids and not allow_empty:
        raise ValueError(f"{name} is empty: a prompt needs at least one token")
    for j, t in enumerate(ids):
        if isinstance(t, bool) or not hasattr(t, "__index__"):
            raise TypeError(f"{name}[{j}] must be an int token id, got {t!r}")
        ids[j] = operator.index(t)  # numpy / torch integer scalars become plain ints
    return tuple(ids)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_list(value) -> bool:
    return isinstance(value, (list, tuple))


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is drawn, and when a sample ends.

    max_new_tokens: new tokens per sample at most: one int for every prompt, or one int >= 0 per prompt (RPO: each
        group's suffix budget m); 0 gives empty "length" completions.
    temperature: 0 = greedy (argmax; the reported log-probs are the model's own log-softmax), else logits / T.
    top_k: 0 = off, else keep the k most likely. top_p: 1 = off, else keep the smallest set of most likely tokens
        whose probability reaches top_p (the most likely token always kept). Applied in that order (the ecosystem's).
    stop_token_ids: ids that end a sample besides the engine's EOS ids; the stop token is kept in the completion.
    seed: an int seeds the call; one int per prompt gives each prompt its own seed; None draws a call seed from
        torch's global RNG, so ``torch.manual_seed`` also makes a run reproducible (see ``seed_streams``).

    Lists are stored as tuples; an invalid value raises ValueError naming the field.
    """

    max_new_tokens: int | tuple[int, ...] = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_token_ids: tuple[int, ...] = ()
    seed: int | tuple[int, ...] | None = None

    def __post_init__(self):
        budget = self.max_new_tokens
        if _is_list(budget):
            for i, b in enumerate(budget):
                if not _is_int(b) or b < 0:
                    raise ValueError(f"SamplingParams.max_new_tokens[{i}] must be an int >= 0, got {b!r}")
            object.__setattr__(self, "max_new_tokens", tuple(budget))
        elif not _is_int(budget) or budget < 0:
            raise ValueError(f"SamplingParams.max_new_tokens must be an int >= 0 or a list of them (one per "
                             f"prompt), got {budget!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0 <= t < math.inf):
            raise ValueError(f"SamplingParams.temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0 < p <= 1):
            raise ValueError(f"SamplingParams.top_p must be in (0, 1] (1 = off), got {p!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        stops = token_ids("SamplingParams.stop_token_ids", self.stop_token_ids, allow_empty=True)
        if any(s < 0 for s in stops):
            raise ValueError(f"SamplingParams.stop_token_ids must be token ids >= 0, got {list(stops)}")
        object.__setattr__(self, "stop_token_ids", stops)
        if _is_list(self.seed):
            bad = [x for x in self.seed if not _is_int(x)]
            if bad:
                raise ValueError(f"SamplingParams.seed as a list must hold ints (one per prompt), got {bad[0]!r}")
            object.__setattr__(self, "seed", tuple(self.seed))
        elif self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"SamplingParams.seed must be an int, a list of ints (one per prompt) or None, "
                             f"got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def budgets(self, count: int) -> list[int]:
        """``max_new_tokens`` of each of ``count`` prompts; ValueError when a per-prompt list has another length."""
        if _is_int(self.max_new_tokens):
            return [self.max_new_tokens] * count
        if len(self.max_new_tokens) != count:
            raise ValueError(f"SamplingParams.max_new_tokens must be an int or one per prompt ({count}), got "
                             f"{len(self.max_new_tokens)} values")
        return list(self.max_new_tokens)

    def seed_streams(self, count: int) -> list[tuple[int, int]]:
        """The (stream seed, stream index) of each of ``count`` prompts; sample j of prompt i draws from stream
        (seed, index, j). An int seeds the call: prompt i gets (seed, i). A list gives prompt i its own seed,
        (seed[i], 0), so its samples do not depend on which other prompts share the call (data-parallel ranks
        sample exactly what one process would). None draws a call seed from torch's global RNG (one draw per
        call that samples anything)."""
        if _is_list(self.seed):
            if len(self.seed) != count:
                raise ValueError(f"SamplingParams.seed as a list needs one seed per prompt ({count}), "
                                 f"got {len(self.seed)}")
            return [(s, 0) for s in self.seed]
        base = self.seed if self.seed is not None else int(torch.randint(0, 2**62, ()).item())
        return [(base, i) for i in range(count)]

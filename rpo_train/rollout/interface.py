"""The rollout engine contract: what the trainer and users call, shared by every backend.

``engine.generate(prompts, *, prefixes=None, n=1, max_new_tokens=256, temperature=1.0, top_p=1.0, top_k=0,
seed=None, stop_token_ids=None)`` (seed: an int for the call, or one int per prompt) returns one list of ``n``
``Completion`` per prompt; ``engine.load_state_dict`` pushes new policy weights and bumps ``engine.weight_version``.
``normalize_requests`` turns the arguments into validated ``GroupRequest`` objects with messages that name the bad
argument; every backend calls it first.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Completion:
    """One sampled continuation.

    token_ids: the generated suffix only (prompt and prefix excluded), a stop token included when it ended the
        sequence. logprobs: one fp32 value per generated token, log-probability of that token under the sampling
        distribution actually used (temperature, top-k, top-p applied; greedy reports the model's own
        log-softmax). finish_reason: "stop" (EOS or a stop token) or "length" (the token budget ran out).
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason

    def __post_init__(self):
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(f"Completion: {len(self.token_ids)} token ids but {len(self.logprobs)} logprobs")
        if self.finish_reason not in ("stop", "length"):
            raise ValueError(f"Completion.finish_reason must be 'stop' or 'length', got {self.finish_reason!r}")


@dataclass(frozen=True)
class GroupRequest:
    """One prompt's group after validation: ``tokens = prompt + prefix``, ``n`` samples of ``budget`` new tokens."""

    index: int
    prompt: tuple[int, ...]
    prefix: tuple[int, ...]
    n: int
    budget: int

    @property
    def tokens(self) -> tuple[int, ...]:
        return self.prompt + self.prefix


@runtime_checkable
class RolloutEngine(Protocol):
    """What every rollout backend (native, HF generate, vLLM) provides."""

    weight_version: int

    def generate(self, prompts: Sequence[Sequence[int]], *, prefixes: Sequence[Sequence[int]] | None = None,
                 n: int = 1, max_new_tokens: int | Sequence[int] = 256, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int | Sequence[int] | None = None,
                 stop_token_ids: Sequence[int] | None = None) -> list[list[Completion]]:
        """Sample ``n`` continuations of every ``prompt + prefix``; one list of ``n`` completions per prompt."""
        ...

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Install new policy weights (HF parameter names); bumps ``weight_version``; no KV survives it."""
        ...


def _token_list(name: str, value, vocab_size: int, *, allow_empty: bool) -> tuple[int, ...]:
    array = isinstance(value, torch.Tensor) or type(value).__name__ == "ndarray"
    if isinstance(value, (str, bytes)) or not (isinstance(value, Sequence) or array):
        raise TypeError(f"{name} must be a list of token ids, got {type(value).__name__}")
    ids = value.tolist() if array else list(value)
    if not ids and not allow_empty:
        raise ValueError(f"{name} is empty: a prompt needs at least one token")
    for j, t in enumerate(ids):
        if isinstance(t, bool) or not hasattr(t, "__index__"):
            raise TypeError(f"{name}[{j}] must be an int token id, got {t!r}")
        ids[j] = t = operator.index(t)  # numpy / torch integer scalars become plain ints
        if not 0 <= t < vocab_size:
            raise ValueError(f"{name}[{j}] = {t} is outside the vocabulary [0, {vocab_size})")
    return tuple(ids)


def seed_streams(seed, count: int) -> list[tuple[int, int]]:
    """The (stream seed, stream index) of each of ``count`` prompts; sample j of prompt i draws from stream
    (seed, index, j). An int seeds the call: prompt i gets (seed, i). A list gives prompt i its own seed,
    (seed[i], 0), so its samples do not depend on which other prompts share the call (data-parallel ranks sample
    exactly what one process would). None draws a call seed from torch's global RNG."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != count:
            raise ValueError(f"argument 'seed' as a list needs one seed per prompt ({count}), got {len(seed)}")
        return [(int(s), 0) for s in seed]
    base = seed if seed is not None else int(torch.randint(0, 2**62, ()).item())
    return [(base, i) for i in range(count)]


def normalize_requests(prompts, prefixes, n, max_new_tokens, *, vocab_size: int, max_model_len: int,
                       stop_token_ids=None) -> tuple[list[GroupRequest], tuple[int, ...]]:
    """Validate ``generate``'s arguments; returns the groups and the extra stop token ids.

    Raises TypeError/ValueError naming the argument: empty prompt, ids outside [0, vocab_size), n < 1, budgets < 0
    or of the wrong count, prompt + prefix + budget > max_model_len.
    """
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise TypeError(f"argument 'prompts' must be a list of token-id lists, got {type(prompts).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"argument 'n' must be an int >= 1 (samples per prompt), got {n!r}")
    count = len(prompts)
    if prefixes is None:
        prefixes = [()] * count
    elif len(prefixes) != count:
        raise ValueError(f"argument 'prefixes' must have one entry per prompt ({count}), got {len(prefixes)}")
    if isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool):
        budgets = [max_new_tokens] * count
    elif isinstance(max_new_tokens, Sequence) and not isinstance(max_new_tokens, (str, bytes)):
        budgets = list(max_new_tokens)
        if len(budgets) != count:
            raise ValueError(f"argument 'max_new_tokens' must be an int or one per prompt ({count}), "
                             f"got {len(budgets)} values")
    else:
        raise TypeError(f"argument 'max_new_tokens' must be an int or a list of ints, got {max_new_tokens!r}")
    stops = () if stop_token_ids is None else _token_list("argument 'stop_token_ids'", stop_token_ids, vocab_size,
                                                          allow_empty=True)
    groups = []
    for i, (prompt, prefix, budget) in enumerate(zip(prompts, prefixes, budgets)):
        p = _token_list(f"prompts[{i}]", prompt, vocab_size, allow_empty=False)
        x = _token_list(f"prefixes[{i}]", () if prefix is None else prefix, vocab_size, allow_empty=True)
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise ValueError(f"max_new_tokens[{i}] must be an int >= 0, got {budget!r}")
        if len(p) + len(x) + budget > max_model_len:
            raise ValueError(f"prompt {i}: prompt ({len(p)}) + prefix ({len(x)}) + max_new_tokens ({budget}) = "
                             f"{len(p) + len(x) + budget} tokens exceeds the model's max length {max_model_len}")
        groups.append(GroupRequest(i, p, x, n, budget))
    return groups, stops

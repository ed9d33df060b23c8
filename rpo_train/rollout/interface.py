"""The rollout engine contract: what the trainer and users call, shared by every backend.

``engine.generate(prompts, *, prefixes=None, n=1, params)`` samples ``n`` continuations of every prompt + prefix
under one ``SamplingParams`` (budgets, temperature, top-k/top-p, stop ids, seeds) and returns one list of ``n``
``Completion`` per prompt; ``engine.load_state_dict`` pushes new policy weights and bumps ``engine.weight_version``.
``normalize_requests`` turns the arguments into validated ``GroupRequest`` objects with messages that name the bad
argument; every backend calls it first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

from .params import SamplingParams, token_ids

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
                 n: int = 1, params: SamplingParams) -> list[list[Completion]]:
        """Sample ``n`` continuations of every ``prompt + prefix`` under ``params``; one list of ``n`` completions
        per prompt."""
        ...

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Install new policy weights (HF parameter names); bumps ``weight_version``; no KV survives it."""
        ...


def _in_vocab(name: str, ids: tuple[int, ...], vocab_size: int) -> tuple[int, ...]:
    for j, t in enumerate(ids):
        if not 0 <= t < vocab_size:
            raise ValueError(f"{name}[{j}] = {t} is outside the vocabulary [0, {vocab_size})")
    return ids


def normalize_requests(prompts, prefixes, n, params: SamplingParams, *, vocab_size: int,
                       max_model_len: int) -> list[GroupRequest]:
    """Validate ``generate``'s arguments against the engine's model; returns the groups.

    Raises TypeError/ValueError naming the argument: params not a ``SamplingParams``, empty prompt, ids (stop ids
    included) outside [0, vocab_size), n < 1, per-prompt budgets of the wrong count, prompt + prefix + budget >
    max_model_len.
    """
    if not isinstance(params, SamplingParams):
        raise TypeError(f"argument 'params' must be a rpo_train.rollout.SamplingParams, got {type(params).__name__}")
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise TypeError(f"argument 'prompts' must be a list of token-id lists, got {type(prompts).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"argument 'n' must be an int >= 1 (samples per prompt), got {n!r}")
    count = len(prompts)
    if prefixes is None:
        prefixes = [()] * count
    elif len(prefixes) != count:
        raise ValueError(f"argument 'prefixes' must have one entry per prompt ({count}), got {len(prefixes)}")
    budgets = params.budgets(count)
    _in_vocab("SamplingParams.stop_token_ids", params.stop_token_ids, vocab_size)
    groups = []
    for i, (prompt, prefix, budget) in enumerate(zip(prompts, prefixes, budgets)):
        p = _in_vocab(f"prompts[{i}]", token_ids(f"prompts[{i}]", prompt, allow_empty=False), vocab_size)
        x = _in_vocab(f"prefixes[{i}]", token_ids(f"prefixes[{i}]", () if prefix is None else prefix,
                                                  allow_empty=True), vocab_size)
        if len(p) + len(x) + budget > max_model_len:
            raise ValueError(f"prompt {i}: prompt ({len(p)}) + prefix ({len(x)}) + max_new_tokens ({budget}) = "
                             f"{len(p) + len(x) + budget} tokens exceeds the model's max length {max_model_len}")
        groups.append(GroupRequest(i, p, x, n, budget))
    return groups

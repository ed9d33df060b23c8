"""Non-finite numbers (NaN, inf) stopped where they enter or would leave a run, with the culprit named.

A diverged run leaves NaN weights behind; loaded again, they would reach the sampler and fail far from their cause.
Every loader of weights (a model folder, a run's checkpoint) and the checkpoint writer call ``check_finite``: one
``torch.isfinite(t).all()`` per tensor, read back in one host sync, and a ``NonFiniteError`` naming the first bad
tensor and its file. The sampler and the training step raise the same error for logits and losses.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .errors import UsageError


class NonFiniteError(UsageError):
    """A tensor, logits or a loss holds NaN or inf; the message names it, where it came from and what to do."""


def first_non_finite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor of ``named`` holding a NaN or an inf, else None (one reduction
    per tensor, one host sync in all)."""
    items = [(name, t) for name, t in named if t.is_floating_point() and t.numel()]
    if not items:
        return None
    device = items[0][1].device
    flags = torch.stack([torch.isfinite(t.detach()).all().to(device) for _, t in items]).tolist()
    return next((name for (name, _), ok in zip(items, flags) if not ok), None)


def check_finite(named: Iterable[tuple[str, torch.Tensor]], where, remedy: str) -> None:
    """Raise ``NonFiniteError`` when a tensor of ``named`` is not finite: ``<where>: tensor <name> holds NaN or inf
    values; <remedy>``. ``where`` is a string or a function of the tensor's name (the file that holds it)."""
    name = first_non_finite(named)
    if name is not None:
        place = where(name) if callable(where) else where
        raise NonFiniteError(f"{place}: tensor {name!r} holds NaN or inf values; {remedy}")

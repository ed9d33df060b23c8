"""Argument checks with messages that name the argument and what was expected."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(
    name: str,
    value: object,
    *,
    ndim: int | Sequence[int] | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Raise TypeError/ValueError unless ``value`` is a tensor of the given rank, dtype and device."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"argument '{name}' must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if value.dim() not in allowed:
            raise ValueError(f"argument '{name}' must have {' or '.join(map(str, allowed))} dims, "
                             f"got shape {tuple(value.shape)}")
    if dtypes is not None and value.dtype not in dtypes:
        raise TypeError(f"argument '{name}' must have dtype in {[str(d) for d in dtypes]}, got {value.dtype}")
    if device is not None and value.device != device:
        raise ValueError(f"argument '{name}' is on {value.device}, expected {device} like the other inputs")
    return value


def check_shape(name: str, value: torch.Tensor, shape: Sequence[int]) -> None:
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"argument '{name}' must have shape {tuple(shape)}, got {tuple(value.shape)}")


def check_finite(name: str, value: torch.Tensor) -> None:
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"argument '{name}' contains NaN or inf")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok or value != value:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"argument '{name}' must be a number {bound}, got {value!r}")


def check_index_range(name: str, value: torch.Tensor, upper: int) -> None:
    """Every entry of integer tensor ``value`` must lie in [0, upper)."""
    if value.numel() == 0:
        return
    lo, hi = int(value.min()), int(value.max())
    if lo < 0 or hi >= upper:
        raise ValueError(f"argument '{name}' must hold indices in [0, {upper}), got values in [{lo}, {hi}]")


def check_softmax_scale(value, head_dim: int) -> float:
    """``softmax_scale`` argument: None -> 1/sqrt(head_dim); else a finite number > 0."""
    if value is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"argument 'softmax_scale' must be a finite number > 0 or None, got {value!r}")
    return float(value)

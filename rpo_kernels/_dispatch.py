"""Backend selection shared by every op of rpo_kernels.

Order when nothing is requested: the compiled CUDA extension, then Triton, then the pure-PyTorch reference.
A caller pins a backend per call with ``backend="cuda"|"triton"|"reference"`` (strict: an unusable backend is an
error), or for the whole process with the environment variable ``RPO_KERNELS_BACKEND`` (a ceiling: an op that lacks
the named backend uses the next one down the chain). Nothing here touches CUDA at import time.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

ENV_VAR = "RPO_KERNELS_BACKEND"
BACKENDS = ("cuda", "triton", "reference")
_CHOICES = BACKENDS + ("auto",)


def interpreter_on() -> bool:
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _triton_import() -> tuple[bool, str]:
    try:
        triton = importlib.import_module("triton")
    except ImportError as exc:
        return False, f"triton is not importable ({exc})"
    return True, f"triton {triton.__version__}"


@functools.cache
def _cuda_ext_import() -> tuple[bool, str]:
    try:
        from .cuda import load

        load()  # imports rpo_kernels._C and registers the fake partners of its ops
    except ImportError as exc:
        return False, f"the CUDA extension rpo_kernels._C is not built ({exc})"
    return True, "rpo_kernels._C loaded"


def backend_status(backend: str, device: torch.device) -> tuple[bool, str]:
    """Whether ``backend`` can run on ``device`` and, either way, why."""
    if backend == "reference":
        return True, "pure PyTorch, any device"
    if backend == "triton":
        ok, why = _triton_import()
        if not ok:
            return False, why
        if device.type == "cuda":
            return True, why
        if device.type == "cpu" and interpreter_on():
            return True, why + " through the CPU interpreter (TRITON_INTERPRET=1)"
        return False, f"Triton kernels need a CUDA device or TRITON_INTERPRET=1 on CPU; got device {device}"
    if backend == "cuda":
        ok, why = _cuda_ext_import()
        if not ok:
            return False, why
        if device.type != "cuda":
            return False, f"the CUDA extension needs a CUDA device; got device {device}"
        return True, why
    raise ValueError(f"backend must be one of {_CHOICES}, got {backend!r}")


def backends(device: torch.device | str | None = None) -> dict[str, dict[str, object]]:
    """Report which backends exist and can run on ``device`` (default: cuda:0 if present, else cpu).

    Returns ``{name: {"available": bool, "why": str}}`` for ``cuda``, ``triton`` and ``reference``.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    return {b: dict(zip(("available", "why"), backend_status(b, device))) for b in BACKENDS}


def resolve_backend(op: str, device: torch.device, backend: str | None, implemented: tuple[str, ...]) -> str:
    """Pick the backend that runs ``op`` on ``device``.

    ``implemented`` is the subset of ``BACKENDS`` the op provides (always including ``"reference"``).
    """
    if backend is not None:
        if backend not in _CHOICES:
            raise ValueError(f"{op}: argument 'backend' must be one of {_CHOICES}, got {backend!r}")
        if backend != "auto":
            if backend not in implemented:
                raise ValueError(f"{op}: backend {backend!r} is not implemented; this op has {implemented}")
            ok, why = backend_status(backend, device)
            if not ok:
                raise RuntimeError(f"{op}: backend {backend!r} cannot run here: {why}")
            return backend
    ceiling = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if ceiling not in _CHOICES:
        raise ValueError(f"environment variable {ENV_VAR} must be one of {_CHOICES}, got {ceiling!r}")
    order = BACKENDS if ceiling == "auto" else BACKENDS[BACKENDS.index(ceiling):]
    for name in order:
        if name not in implemented:
            continue
        # On a CPU the interpreter is a correctness tool, far slower than the reference: only a pin selects it.
        if name != "reference" and device.type != "cuda":
            continue
        if backend_status(name, device)[0]:
            return name
    return "reference"

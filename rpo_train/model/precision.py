"""A run's precision: the master weights AdamW updates, the rollout engine's copy, the training forward's autocast.

``dtype`` (the recipe's top-level key):

- ``float32``: fp32 master weights. On a GPU the engine samples from a bf16 copy and the training forward runs
  under bf16 autocast (the fused loss accumulates in fp32); on a CPU everything stays fp32.
- ``auto``: fp32 master weights, bf16 compute wherever the device does bf16 fast: a GPU, or a CPU with AVX512-BF16
  or AMX (detected, ``cpu_bf16_fast``); fp32 everywhere on a CPU without them, where a bf16 matmul runs on emulated
  kernels and is far slower than fp32 (a 48x576x1536 one measured 50x slower on an AVX2-only EPYC).
- ``bfloat16`` / ``float16``: master weights in that dtype, no autocast.

``rollout.dtype`` overrides the engine's copy ("auto" follows the above).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def cpu_bf16_fast() -> bool:
    """True when this CPU has native bf16 matmul instructions (AVX512-BF16 or AMX tiles)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def cpu_name() -> str:
    """The CPU's capability as torch's dispatcher sees it, with the bf16 instructions it has, e.g. "AVX512 +
    AVX512-BF16" or "AVX2"."""
    extras = [name for name, has in (("AVX512-BF16", torch.cpu._is_avx512_bf16_supported()),
                                     ("AMX", torch.cpu._is_amx_tile_supported())) if has]
    return " + ".join([torch.backends.cpu.get_cpu_capability(), *extras])


@dataclass(frozen=True)
class Precision:
    """master: the trained weights' dtype; engine: the rollout engine's copy; autocast: the dtype of the training
    forward (and the drift probe, old and reference log-probs) under ``torch.autocast``, None for none; why: one
    line for the run header."""

    master: torch.dtype
    engine: torch.dtype
    autocast: torch.dtype | None
    why: str

    def context(self, device_type: str):
        """``torch.autocast(device_type, self.autocast)``, or a disabled one when there is no autocast."""
        dtype = self.autocast or torch.float32
        return torch.autocast(device_type, dtype=dtype, enabled=self.autocast is not None)

    def header(self) -> str:
        name = str(self.master).removeprefix("torch.")
        compute = str(self.autocast or self.master).removeprefix("torch.")
        engine = str(self.engine).removeprefix("torch.")
        return f"{name} master weights, {compute} training forward, {engine} rollout engine ({self.why})"


def resolve_precision(device: str, dtype: str, rollout_dtype: str = "auto") -> Precision:
    """The ``Precision`` of a run on ``device`` (cpu, cuda, cuda:N) with the recipe's ``dtype`` and
    ``rollout.dtype``; "auto" asks this machine (``cpu_bf16_fast``) on a CPU."""
    gpu = device.startswith("cuda")
    if dtype in ("float32", "auto"):
        if gpu:
            fast, why = True, "GPU: bf16 compute, fp32 AdamW"
        elif dtype == "auto":
            fast = cpu_bf16_fast()
            why = (f"dtype auto: this CPU has {cpu_name()}" if fast
                   else f"dtype auto: this CPU ({cpu_name()}) has no bf16 instructions, so fp32")
        else:
            fast, why = False, "dtype float32 on a CPU"
        master, compute = torch.float32, (torch.bfloat16 if fast else None)
    else:
        master, compute, why = getattr(torch, dtype), None, f"dtype {dtype}"
    engine = (compute or master) if rollout_dtype == "auto" else getattr(torch, rollout_dtype)
    if rollout_dtype != "auto":
        why += f"; rollout.dtype {rollout_dtype}"
    return Precision(master, engine, compute, why)

"""What every Triton launcher of rpo_kernels shares: launch options, precision constexprs, strides, grid splits.

Off a GPU the kernels run in the CPU interpreter (``TRITON_INTERPRET=1``), which takes no launch options and
computes bf16 wrongly, so tiles are upcast to fp32 after loading there; on a GPU 16-bit tiles go to the tensor cores
as stored and fp32 tiles use IEEE fp32 dots (no TF32).
"""

from __future__ import annotations

import torch
import triton

from .._dispatch import interpreter_on

LOG2E = 1.4426950408889634


def launch_options(options: dict) -> dict:
    """A kernel's GPU launch options (num_warps, num_stages), or none in the interpreter."""
    return {} if interpreter_on() else options


def precision(dtype: torch.dtype) -> dict:
    """UPCAST / DOT_PRECISION constexprs for tiles stored in ``dtype`` in this process."""
    upcast = interpreter_on() or dtype == torch.float32
    return dict(UPCAST=upcast, DOT_PRECISION="ieee" if upcast else "tf32")


def spec_precision(dt: str) -> dict:
    """The same constexprs on a GPU for the storage dtype ``dt`` ("bf16" | "fp16" | "fp32"): ahead-of-time lowering."""
    return dict(UPCAST=dt == "fp32", DOT_PRECISION="ieee" if dt == "fp32" else "tf32")


def strides(x: torch.Tensor) -> tuple[int, int, int]:
    """The strides of a 3-d tensor, as the kernels take them."""
    return x.stride(0), x.stride(1), x.stride(2)


def grid_splits(programs: int, max_splits: int, device: torch.device) -> int:
    """How many ways to split a long axis (KV rows, vocab) so that ``programs`` x splits fills the GPU about twice
    over, at most ``max_splits``; 1 off a GPU (the interpreter pays per program) or with nothing to launch."""
    if device.type != "cuda" or programs == 0:
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(max_splits, triton.cdiv(2 * sms, programs)))

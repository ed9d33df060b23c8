"""CUDA C++ backend of rpo_kernels: the compiled extension ``rpo_kernels._C`` built from ``csrc/``.

Importing this package needs no GPU, no CUDA toolkit and no extension; nothing here touches CUDA. ``load()`` imports
the extension (which registers ``torch.ops.rpo_kernels.*``) and the fake partners that let ``torch.compile`` trace
the ops; ``available()`` says whether that worked and why not. The wrappers take the same arguments as the public
functions of ``rpo_kernels`` and load the extension on first use. Build it with CMake (see docs/kernels.md).
"""

from .ops import available, lane_decode_attention, load, register_fakes, supports_lane_decode

__all__ = ["available", "lane_decode_attention", "load", "register_fakes",
           "supports_lane_decode"]

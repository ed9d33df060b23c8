"""Count the device -> host synchronisation points of a piece of code, on any device (a CPU included).

On a GPU, ``torch.cuda.set_sync_debug_mode("error")`` catches a synchronisation as it happens. A CPU never waits for
a device, so there the count is of the operations that WOULD make the host wait for a GPU if the tensors lived there:

- aten ops seen by a ``TorchDispatchMode``: ``_local_scalar_dense`` (``.item()``, ``int(t)``, ``float(t)``,
  ``bool(t)``, ``if t:``), ``nonzero``, ``masked_select``, ``unique`` (all forms), ``repeat_interleave`` of a repeats
  tensor without ``output_size``, indexing with a boolean mask (``index``/``index_put``), a copy from another device
  to the CPU (``_to_copy``/``copy_``; never seen when everything is on the CPU);
- ``Tensor.tolist()`` and ``Tensor.numpy()``, wrapped: on a CPU tensor they read memory without dispatching any aten
  op (checked by ``tests/kernels/test_host_syncs.py``), so no dispatch mode sees them.

Triton kernels launched through the CPU interpreter (``TRITON_INTERPRET=1``) read CPU tensors in place and add
nothing to the count (checked by the same test file).
"""

from __future__ import annotations

import contextlib
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
ALWAYS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
          aten._unique.default, aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default}
MASK_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}


def _is_sync(func, args, kwargs) -> bool:
    if func in ALWAYS:
        return True
    if func == aten.repeat_interleave.Tensor:
        return kwargs.get("output_size") is None
    if func in MASK_INDEXING:
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1])
    if func == aten._to_copy.default:
        target = kwargs.get("device")
        return target is not None and torch.device(target).type == "cpu" and args[0].device.type != "cpu"
    if func == aten.copy_.default:
        return args[0].device.type == "cpu" and args[1].device.type != "cpu"
    return False


class HostSyncs(TorchDispatchMode):
    """``with HostSyncs() as syncs: ...`` then ``syncs.count`` / ``syncs.events`` (names, in order)."""

    def __init__(self):
        super().__init__()
        self.events: list[str] = []
        self._patches = contextlib.ExitStack()

    @property
    def count(self) -> int:
        return len(self.events)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_sync(func, args, kwargs):
            self.events.append(str(func))
        return func(*args, **kwargs)

    def _wrap_method(self, name: str):
        real = getattr(torch.Tensor, name)

        def counted(tensor, *args, **kwargs):
            self.events.append(f"Tensor.{name}")
            return real(tensor, *args, **kwargs)

        self._patches.enter_context(mock.patch.object(torch.Tensor, name, counted))

    def __enter__(self):
        for name in ("tolist", "numpy"):
            self._wrap_method(name)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._patches.close()

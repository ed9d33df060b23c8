"""Data-parallel training across processes (``torchrun``): who does what, and the few collectives the trainer needs.

Every rank holds the whole model, optimizer and experience cache. Per step, the GLOBAL list of questions is the same on
every rank (same data order); each rank rolls out a contiguous share, the scored groups are gathered so that every
rank sees all of them (metrics, dynamic-sampling refill and cache updates are global and applied in one order), each
rank trains on its share of the kept groups, and gradients are summed across ranks before the optimizer step (the
loss weights use the global token / sequence count, so the update equals one process over the same global batch).
With one process every collective is the identity, so the trainer has a single code path.

Launched by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR`` in the environment): gloo on a CPU,
NCCL on GPUs (rank r uses ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from .errors import UsageError


class RankLostError(RuntimeError):
    """A collective failed: another rank died or the network broke. The job stops; resume from the checkpoint."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job. ``DistContext()`` is the single-process job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, device: str = "cpu", timeout_s: float = 1800.0) -> DistContext:
        """Join the process group described by torchrun's environment (a single process when WORLD_SIZE <= 1)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            if torch.cuda.device_count() <= local:
                raise UsageError(f"device: 'cuda' needs a GPU per local rank, but LOCAL_RANK={local} and this "
                                   f"machine has {torch.cuda.device_count()} GPUs; lower --nproc_per_node or use "
                                   "device=cpu")
            torch.cuda.set_device(local)
        if not tdist.is_initialized():
            tdist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s))
        return cls(rank, world, local)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, device: str) -> str:
        """``cuda`` becomes this rank's ``cuda:LOCAL_RANK``; other devices are kept."""
        return f"cuda:{self.local_rank}" if self.distributed and device == "cuda" else device

    def share(self, items: list) -> list:
        """This rank's contiguous share of ``items`` (sizes differ by at most one; rank order = list order)."""
        n, w, r = len(items), self.world_size, self.rank
        return items[r * n // w:(r + 1) * n // w]

    def _guard(self, what: str, fn):
        try:
            return fn()
        except RuntimeError as exc:  # gloo / NCCL raise RuntimeError subclasses when a peer is gone
            raise RankLostError(f"rank {self.rank}/{self.world_size}: {what} failed, another rank is gone "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc

    def gather(self, obj) -> list:
        """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        self._guard("all_gather_object", lambda: tdist.all_gather_object(out, obj))
        return out

    def sum_floats(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks of a list of floats (float64)."""
        if not self.distributed or not values:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        if tdist.get_backend() == "nccl":
            t = t.cuda()
        self._guard("all_reduce", lambda: tdist.all_reduce(t))
        return t.cpu().tolist()

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (every rank calls it at the same point)."""
        return self.sum_floats([float(flag)])[0] > 0

    def sum_gradients(self, params, bucket_mb: float = 64.0) -> None:
        """Sum every parameter's gradient over ranks, in buckets of about ``bucket_mb`` MiB (a missing gradient
        counts as zeros, so ranks whose micro-batches skipped a parameter stay in step)."""
        if not self.distributed:
            return
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        bucket, size = [], 0
        for i, p in enumerate(params):
            bucket.append(p.grad)
            size += p.grad.numel() * p.grad.element_size()
            if size >= bucket_mb * 2**20 or i == len(params) - 1:
                flat = torch.cat([g.reshape(-1) for g in bucket])
                self._guard("gradient all_reduce", lambda flat=flat: tdist.all_reduce(flat))
                offset = 0
                for g in bucket:
                    g.copy_(flat[offset:offset + g.numel()].view_as(g))
                    offset += g.numel()
                bucket, size = [], 0

    def barrier(self) -> None:
        if self.distributed:
            self._guard("barrier", tdist.barrier)

    def close(self) -> None:
        if self.distributed and tdist.is_initialized():
            tdist.destroy_process_group()

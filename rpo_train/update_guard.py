"""The non-finite guard of the policy update: a step whose loss or gradient norm is NaN or inf skips its optimizer
update instead of writing NaN into the weights, and ``optim.max_nonfinite_steps`` such steps in a row stop the run.

One numerically unlucky batch (an overflow under bf16, a tiny-probability token) should not end a long run, so the
update is skipped, logged (``train/skipped_nonfinite`` in metrics.jsonl and a warning on stderr) and training goes on;
a policy that keeps producing them has diverged, and the run stops with one line (``NonFiniteError``, exit 2 through
``rpo-train``) while its last checkpoint still holds finite weights.
"""

from __future__ import annotations

import math
import sys

import torch
from tqdm.auto import tqdm

from .runtime.distributed import DistContext
from .runtime.finite import NonFiniteError


class NonFiniteGuard:
    """Decides, the same way on every rank, whether an update may be applied, and counts the skipped ones in a row
    (``limit`` of them stop the run)."""

    def __init__(self, limit: int, dist: DistContext, lr: float):
        self.limit, self.dist, self.lr = limit, dist, lr
        self.streak = 0

    def finite(self, loss: float, grad_norm: torch.Tensor) -> bool:
        """Whether this rank's summed ``loss`` (a Python float, already on the host) and the global ``grad_norm``
        (the same on every rank, read where the step reads it anyway) are finite on every rank."""
        local_bad = not math.isfinite(loss)
        if self.dist.distributed:  # ranks' losses differ: they agree on one decision
            local_bad = self.dist.any_rank(local_bad)
        return not local_bad and math.isfinite(float(grad_norm))

    def settle(self, step: int, skipped: bool, loss: float, grad_norm: float) -> dict[str, float]:
        """After step ``step``'s update (``skipped`` or applied): its metric, a warning for a skipped one, and a
        ``NonFiniteError`` when it makes ``limit`` skipped in a row."""
        self.streak = self.streak + 1 if skipped else 0
        if self.streak >= self.limit:
            raise NonFiniteError(f"step {step}: the loss or gradient norm was NaN or inf in {self.streak} steps in a "
                                 f"row (optim.max_nonfinite_steps={self.limit}; last loss {loss}, grad norm "
                                 f"{grad_norm}): the policy diverged; lower optim.lr (now {self.lr:g}) and run "
                                 "again, or resume from the last checkpoint")
        if skipped and self.dist.is_main:
            tqdm.write(f"rpo-train: warning: step {step}: loss {loss}, grad norm {grad_norm}: not finite, the "
                       f"update is skipped ({self.streak} in a row; {self.limit} stop the run)", file=sys.stderr)
        return {"train/skipped_nonfinite": float(skipped)}

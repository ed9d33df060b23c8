"""Where RPO cuts a cached response: how many tokens m to drop from its end, and at which token.

``mode`` sets L, the longest cut:
- "fixed": L = ``max_cut`` (300, 500, 800 in the paper);
- "dynamic": L = ``factor`` * l, l = the shortest response of the question's last group (the paper's 0.5 l, l);
- "adaptive": L is kept per question and moves with what its groups show: x ``grow`` after a zero-variance group
  (all right or all wrong: the cut decided nothing, look further back), x ``shrink`` after a mixed one, within
  [``min_cut``, ``max_cut``], starting at ``min_cut`` (targets open groups, as SPEED-RL/PROS target pass rates).

``cut_at`` sets the cut within the last L tokens:
- "uniform": m ~ U{0..L} (the paper);
- "entropy": the first re-sampled token is drawn uniformly among the ``entropy_top`` share of the window's tokens
  whose next-token entropy under the current policy is highest (TreeRL/FR3E branch at entropy peaks). The entropies
  come from the drift probe (``rpo_train.drift``), which runs the current policy over every cached response it cuts.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .runtime.errors import UsageError, check_types

TRUNCATION_MODES = ("fixed", "dynamic", "adaptive")
CUT_POINTS = ("uniform", "entropy")


@dataclass(frozen=True)
class TruncationConfig:
    """The ``truncation:`` section of a recipe (see the module docstring)."""

    mode: str = "fixed"
    max_cut: int = 300
    factor: float = 0.5
    min_cut: int = 8
    grow: float = 2.0
    shrink: float = 0.5
    cut_at: str = "uniform"
    entropy_top: float = 0.25

    def __post_init__(self):
        check_types(self, "truncation")
        if self.mode not in TRUNCATION_MODES:
            raise UsageError(f"truncation.mode must be one of {TRUNCATION_MODES}, got {self.mode!r}")
        if self.cut_at not in CUT_POINTS:
            raise UsageError(f"truncation.cut_at must be one of {CUT_POINTS}, got {self.cut_at!r}")
        if self.max_cut < 0 or self.min_cut < 0:
            raise UsageError(f"truncation.max_cut and truncation.min_cut must be >= 0, got {self.max_cut}, "
                             f"{self.min_cut}")
        if self.mode == "adaptive" and self.min_cut > self.max_cut:
            raise UsageError(f"truncation.min_cut ({self.min_cut}) must not exceed truncation.max_cut "
                             f"({self.max_cut}) in mode adaptive")
        if not 0.0 < self.factor <= 1.0:
            raise UsageError(f"truncation.factor must be in (0, 1], got {self.factor!r}")
        if self.grow < 1.0 or not 0.0 < self.shrink <= 1.0:
            raise UsageError(f"truncation.grow must be >= 1 and truncation.shrink in (0, 1], got {self.grow}, "
                             f"{self.shrink}")
        if not 0.0 < self.entropy_top <= 1.0:
            raise UsageError(f"truncation.entropy_top must be in (0, 1], got {self.entropy_top}")

    def initial_limit(self) -> float:
        """The per-question L a new cache entry starts with (used by mode adaptive only)."""
        return float(self.min_cut) if self.mode == "adaptive" else 0.0

    def adapt(self, limit: float, zero_variance: bool) -> float:
        """The question's next L after a group on its prefix (mode adaptive; other modes keep ``limit``)."""
        if self.mode != "adaptive":
            return limit
        moved = limit * (self.grow if zero_variance else self.shrink)
        return float(min(max(moved, self.min_cut, 1.0 if zero_variance else 0.0), self.max_cut))

    def limit(self, entry) -> int:
        """L for this cache entry (``rpo_train.cache.CacheEntry``)."""
        if self.mode == "fixed":
            return self.max_cut
        if self.mode == "dynamic":
            return int(self.factor * entry.group_min_len)
        return int(round(entry.cut_limit))

    def cut(self, entry, rng: random.Random, entropy: list[float] | None = None) -> tuple[list[int], int]:
        """(prefix, m): the response minus its last m tokens (empty when m >= its length).

        ``entropy`` [len(response)]: the current policy's entropy at each response token (required for cut_at
        entropy); m is then the distance from the end of the token chosen to be re-sampled first.
        """
        limit = self.limit(entry)
        n = entry.length
        if self.cut_at == "uniform" or limit == 0 or n == 0:
            m = rng.randint(0, limit)
            return entry.response_ids[:max(n - m, 0)], m
        if entropy is None or len(entropy) != n:
            raise ValueError(f"truncation.cut_at entropy needs one entropy per response token ({n}), got "
                             f"{None if entropy is None else len(entropy)}")
        window = list(range(max(n - limit, 0), n))  # the index of the first token sampled again
        top = sorted(window, key=lambda j: (-entropy[j], j))[:max(1, math.ceil(self.entropy_top * len(window)))]
        keep = rng.choice(sorted(top))
        return entry.response_ids[:keep], n - keep

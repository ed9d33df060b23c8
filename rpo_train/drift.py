"""Drift of the cached bodies, and when to refresh an entry (the guard of RPO's blind spot).

RPO never samples a kept prefix again: it was written once, by the policy of its time, and is only shortened later.
Its tokens get almost no policy-gradient signal (group advantages sum to zero over the G samples that share it), so
the current policy's own way of writing the body can drift while every reward stays fine. Each cache entry keeps the
log-probability its writer gave each token; every step the current policy scores the entries it is about to cut (the
probe: one no-grad forward per question over prompt + cached response, which also gives the next-token entropies the
entropy cut uses), and the two are compared token by token over the entry's response:

    kl = mean_t (log p_writer(a_t) - log p_now(a_t))        (k1: estimates KL(writer || now), the tokens being the
                                                               writer's samples)
    m2 = mean_t (log p_now(a_t) - log p_writer(a_t))^2       (M2PO's second moment of the log-ratio)
    flips = #{t : p_writer(a_t) > 0.9 and p_now(a_t) < 0.5}  (tokens the writer was sure of that the current policy
                                                               would no longer write greedily: a body that breaks)
    drop = max_t (log p_writer(a_t) - log p_now(a_t))        (the largest fall of one token, in nats: a token the
                                                               current policy has all but ruled out)

The means see a broken body poorly (a garbled step counter is a few tokens in two hundred); ``flips`` counts exactly
those tokens. Measured on the recurrence task's final RPO-GRPO checkpoints: 61 and 106 of 400 entries flipped in
runs ending at 88% and 74.5% (broken bodies), 13 and 14 in runs ending at 100%, while m2's p95 was 0.029-0.045 in
all four. ``drop`` sees a token of any writer probability that the policy has since ruled out (p_writer 0.34, p_now
1e-7 in a run whose KL term then spiked: the reference still gave it 3e-4, and k3 = exp(ref - now) weighed it 2,300
times a typical token).

An entry is refreshed (its question's group runs the full path; the cache then takes one of those responses) when the
statistic ``cache.refresh_stat`` reaches ``cache.refresh_drift``, when its body has been re-used ``cache.max_reuses``
times, or, for a random ``cache.full_share`` of the groups, regardless. Every refresh's tokens count as generated
tokens and its time as rollout time.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .cache import DRIFT_STATS, CacheConfig, CacheEntry

REASONS = ("drift", "reuses", "share")
FLIP_WRITER = math.log(0.9)  # a token its writer gave more than 0.9 ...
FLIP_NOW = math.log(0.5)  # ... and the current policy less than 0.5


@dataclass(frozen=True)
class Drift:
    """Drift statistics of one entry over its ``tokens`` tokens with a known writer log-prob."""

    kl: float
    m2: float
    flips: int
    tokens: int
    drop: float = 0.0


def measure(written: list[float], now: list[float]) -> Drift:
    """``Drift`` from the writer's and the current policy's log-probs of the same tokens (NaN writers skipped)."""
    if len(written) != len(now):
        raise ValueError(f"drift: {len(written)} written log-probs but {len(now)} current ones")
    pairs = [(w, c) for w, c in zip(written, now) if not math.isnan(w)]
    if not pairs:
        return Drift(0.0, 0.0, 0, 0)
    diffs = [c - w for w, c in pairs]
    flips = sum(w > FLIP_WRITER and c < FLIP_NOW for w, c in pairs)
    return Drift(-sum(diffs) / len(diffs), sum(d * d for d in diffs) / len(diffs), flips, len(diffs),
                 max(0.0, -min(diffs)))


def refresh_reason(entry: CacheEntry, drift: Drift | None, cfg: CacheConfig, rng: random.Random,
                   step: int = 1) -> str | None:
    """Why this entry's group should run the full path at ``step`` (1-based) ("drift", "reuses" or "share"), or None.

    ``rng`` is the group's own (seeded from the run seed, the step and its place in the batch): the share draw is the
    same on every rank. It is made on steps that ``cache.refresh_every`` divides, with probability ``full_share x
    refresh_every`` (at most 1), whatever the other reasons say, so that switching them leaves it unchanged.
    """
    share_step = step % cfg.refresh_every == 0
    drawn = cfg.full_share > 0 and share_step and rng.random() < min(1.0, cfg.full_share * cfg.refresh_every)
    if drift is not None and cfg.refresh_drift > 0 and getattr(drift, cfg.refresh_stat) >= cfg.refresh_drift:
        return "drift"
    if cfg.max_reuses and entry.reuses >= cfg.max_reuses:
        return "reuses"
    return "share" if drawn else None


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def drift_metrics(drifts: list[Drift | None], reasons: list[str | None]) -> dict[str, float]:
    """Per-step metrics of the groups rolled out: drift mean and p95 over the measured entries, refresh shares."""
    out: dict[str, float] = {}
    measured = [d for d in drifts if d is not None and d.tokens]
    for stat in DRIFT_STATS:
        if measured:
            values = [getattr(d, stat) for d in measured]
            out[f"cache/drift_{stat}_mean"] = sum(values) / len(values)
            out[f"cache/drift_{stat}_p95"] = _p95(values)
    if measured:
        out["cache/drift_flipped_share"] = sum(d.flips > 0 for d in measured) / len(measured)
    n = max(len(reasons), 1)
    out["rollout/refresh_share"] = sum(r is not None for r in reasons) / n
    for reason in REASONS:
        out[f"rollout/refreshes_{reason}"] = float(sum(r == reason for r in reasons))
    return out

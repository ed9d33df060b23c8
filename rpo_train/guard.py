"""The drift guard resolved from the objective, when a recipe leaves it to the run.

RPO's kept prefixes are never sampled again, so the policy's own way of writing them can drift unseen (docs/method.md,
"The drift guard"). What holds them depends on the objective:

- with a KL term (beta > 0, GRPO's default), the per-token KL clamp (``objective.kl_clamp``) keeps the cached tokens
  in place: no refresh is needed (RPO-GRPO 99.7 +- 0.4 vs GRPO's 99.9 +- 0.2, 5 seeds, docs/benchmarks.md);
- without one (beta = 0: DAPO, or GRPO with beta 0), nothing does: RPO-DAPO with no refresh ends at 12-74% where
  DAPO ends at 99-100%; the flips refresh at 2 (``cache.refresh_stat: flips``, ``cache.refresh_drift: 2``) keeps it
  at 99.2 +- 0.8 vs DAPO's 98.9 +- 1.4 (5 seeds).

So an RPO run whose recipe and overrides set none of the refresh keys (``cache.refresh_stat``,
``cache.refresh_drift``, ``cache.max_reuses``, ``cache.full_share``) and whose objective has no KL term gets the flips
refresh at 2. An explicit setting always wins (``cache.refresh_drift=0`` turns the guard off). ``describe`` is the
run's first-line account of the choice.
"""

from __future__ import annotations

import dataclasses

REFRESH_KEYS = ("refresh_stat", "refresh_drift", "max_reuses", "full_share")
NO_KL_GUARD = {"refresh_stat": "flips", "refresh_drift": 2.0}


def resolve_guard(cfg, raw: dict):
    """``cfg`` (a ``RunConfig`` built from the recipe mapping ``raw``, overrides applied) with the guard resolved."""
    given = raw.get("cache") if isinstance(raw.get("cache"), dict) else {}
    if cfg.objective.mode != "rpo" or cfg.objective.beta > 0 or any(k in given for k in REFRESH_KEYS):
        return cfg
    return dataclasses.replace(cfg, cache=dataclasses.replace(cfg.cache, **NO_KL_GUARD))


def describe(cfg) -> str:
    """The drift guard a run uses, in a few words (the run's first line)."""
    if cfg.objective.mode != "rpo":
        return "full path (no drift guard needed)"
    c = cfg.cache
    parts = [f"refresh at {c.refresh_stat} >= {c.refresh_drift:g}"] if c.refresh_drift else []
    parts += [f"max_reuses {c.max_reuses}"] if c.max_reuses else []
    parts += [f"full share {c.full_share:g}"] if c.full_share else []
    if cfg.objective.beta > 0:
        parts.append(f"KL term (beta {cfg.objective.beta:g}) clamped at {cfg.objective.kl_clamp:g} per token"
                     if cfg.objective.kl_clamp else f"KL term (beta {cfg.objective.beta:g})")
    return "drift guard: " + (", ".join(parts) if parts else "none")

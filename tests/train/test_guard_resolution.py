"""The drift guard resolved from the objective (``rpo_train.guard``): each documented mode gets its guard, an
explicit setting wins, and the run's first line says which."""

from __future__ import annotations

import pytest

from rpo_train.config import load_recipe
from rpo_train.guard import describe


@pytest.mark.parametrize("overrides,stat,drift", [
    ([], "m2", 0.0),                                            # GRPO: the clamped KL term, no refresh
    (["objective.algorithm=dapo"], "flips", 2.0),               # no KL term: the flips refresh
    (["objective.beta=0"], "flips", 2.0),
    (["objective.loss_type=dr_grpo"], "m2", 0.0),
    (["objective.loss_type=bnpo"], "m2", 0.0),
    (["objective.loss_tokens=suffix"], "m2", 0.0),
    (["objective.algorithm=dapo", "cache.refresh_drift=0"], "m2", 0.0),  # explicit: off
    (["objective.algorithm=dapo", "cache.refresh_stat=kl", "cache.refresh_drift=0.5"], "kl", 0.5),
    (["objective.algorithm=dapo", "cache.max_reuses=3"], "m2", 0.0),       # another refresh given: kept as is
    (["objective.algorithm=dapo", "objective.mode=full"], "m2", 0.0),      # full path: nothing to guard
])
def test_each_mode_gets_its_guard(overrides, stat, drift):
    cfg = load_recipe("tiny-cpu", overrides)
    assert (cfg.cache.refresh_stat, cfg.cache.refresh_drift) == (stat, drift)


def test_the_choice_is_described_and_the_silent_off_is_still_noted():
    assert describe(load_recipe("tiny-cpu")) == "drift guard: KL term (beta 0.04) clamped at 10 per token"
    assert describe(load_recipe("tiny-cpu", ["objective.algorithm=dapo"])) == "drift guard: refresh at flips >= 2"
    off = load_recipe("tiny-cpu", ["objective.algorithm=dapo", "cache.refresh_drift=0"])
    assert describe(off) == "drift guard: none" and off.notes()
    assert describe(load_recipe("tiny-cpu", ["objective.mode=full"])) == "full path (no drift guard needed)"

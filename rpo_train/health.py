"""Whether a run still learns: a step in which no group had a learning signal (every group's G rewards equal, so
every advantage is zero) trains nothing, and a run with ``health_window`` such steps in a row has most likely died.

It then says so once, on stderr and in metrics.jsonl (``health/no_signal_warning``), naming the likely causes; each
step's row carries ``health/no_signal_steps`` (the steps in a row without a signal so far), and the closing summary
names the last step that had a signal (``last_signal_step``). The counters live in the run state
(``rpo_train.runtime.run_state.RunState``), so a resumed run goes on counting where its checkpoint was.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from .groups import Group
from .runtime.run_state import RunState


def observe_signal(run: RunState, step: int, rolled: list[Group], window: int, *, announce: bool,
                   lr: float) -> dict[str, float]:
    """Count step ``step`` (its rolled-out groups, global) in ``run``; its health metrics. After ``window`` steps in a
    row without a signal (0: never), the first time in the run, a warning on stderr (when ``announce``)."""
    if any(not g.zero_variance for g in rolled):
        run.last_signal_step, run.no_signal_steps = step, 0
        return {"health/no_signal_steps": 0.0}
    run.no_signal_steps += 1
    out = {"health/no_signal_steps": float(run.no_signal_steps)}
    if window and run.no_signal_steps >= window and not run.health_warned:
        run.health_warned = True
        out["health/no_signal_warning"] = 1.0
        if announce:
            tqdm.write(f"rpo-train: warning: {no_signal_message(run, step, rolled, lr)}", file=sys.stderr)
    return out


def no_signal_message(run: RunState, step: int, rolled: list[Group], lr: float) -> str:
    """What the warning says: since when, what the rewards were, and the likely causes."""
    rewards = sorted({r for g in rolled for r in g.rewards})
    seen = f"step {run.last_signal_step}" if run.last_signal_step is not None else "no step yet"
    return (f"step {step}: no learning signal for {run.no_signal_steps} steps in a row (every group's rewards equal; "
            f"rewards this step {rewards[:4]}; last signal: {seen}). Likely causes: a learning rate too high "
            f"(optim.lr={lr:g}) or a diverged policy; a reward function that always returns the same value; tasks "
            "too hard or too easy for the model")

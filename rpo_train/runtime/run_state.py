"""The state an rpo-train run carries from step to step besides weights, optimizer, cache and RNG: one object that
checkpoints save and restore (``rpo_train.runtime.checkpointing``), not loose attributes of the trainer.

Saved in a checkpoint's ``state.json`` under the keys it always had (``order``, ``timings``, ``tokens_generated``,
``rollout_counts``, ``last_drift``, ``cache_init``), so checkpoints written before this object resume unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _timings() -> dict[str, float]:
    return {"cache_init_s": 0.0, "rollout_s": 0.0, "train_s": 0.0}


def _counts() -> dict[str, int]:
    return {"tokens": 0, "samples": 0, "init_responses": 0, "init_length": 0, "groups": 0, "refreshed": 0}


@dataclass
class RunState:
    """step: optimisation steps done. order: the rest of the current pass over the training questions (indices, drawn
    from the end). timings: seconds of cache init, rollout and training. tokens_generated: every token sampled for
    training, the cache init's included. rollout_counts: the training rollouts' tokens and samples, the cache init's
    responses and their total length (a full-path sample's length under the policy that wrote it), groups rolled out
    and how many were refreshes. last_drift: the drift metrics of the last step that measured them. init_mode: the
    resolved ``cache.init`` (eager | lazy | file), decided when the run started."""

    init_mode: str
    step: int = 0
    order: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=_timings)
    tokens_generated: int = 0
    rollout_counts: dict[str, int] = field(default_factory=_counts)
    last_drift: dict[str, float] = field(default_factory=dict)

    def to_saved(self) -> dict:
        """The ``state.json`` fields (the step is saved by the checkpoint itself)."""
        return {"order": self.order, "timings": self.timings, "tokens_generated": self.tokens_generated,
                "rollout_counts": self.rollout_counts, "last_drift": self.last_drift, "cache_init": self.init_mode}

    @classmethod
    def from_saved(cls, state: dict, cached: int, default_init_mode: str) -> RunState:
        """The run state of a checkpoint's ``state.json`` (``cached``: entries of its cache). Older checkpoints: a
        mean init length instead of the init counters (all entries initialised before step 1), and no init mode
        (then ``default_init_mode``: they were all eager or a file)."""
        counts = dict(state.get("rollout_counts", {}))
        if "init_mean_length" in counts:
            mean = counts.pop("init_mean_length")
            if mean:
                counts.update(init_responses=cached, init_length=round(mean * cached))
        return cls(init_mode=state.get("cache_init", default_init_mode), step=state["step"], order=state["order"],
                   timings=state["timings"], tokens_generated=state["tokens_generated"],
                   rollout_counts={**_counts(), **counts}, last_drift=state.get("last_drift", {}))

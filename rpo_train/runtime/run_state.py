"""The state an rpo-train run carries from step to step besides weights, optimizer, cache and RNG: one object that
checkpoints save and restore (``rpo_train.runtime.checkpointing``), not loose attributes of the trainer.

Saved in a checkpoint's ``state.json`` under the keys it always had (``order``, ``timings``, ``tokens_generated``,
``rollout_counts``, ``last_drift``, ``cache_init``, and since the health check ``health``), so checkpoints written
before this object resume unchanged.
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
    resolved ``cache.init`` (eager | lazy | file), decided when the run started. last_signal_step, no_signal_steps,
    health_warned: the last step with a learning signal, the steps in a row since without one, and whether the run
    said so (``rpo_train.health``)."""

    init_mode: str
    step: int = 0
    order: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=_timings)
    tokens_generated: int = 0
    rollout_counts: dict[str, int] = field(default_factory=_counts)
    last_drift: dict[str, float] = field(default_factory=dict)
    last_signal_step: int | None = None
    no_signal_steps: int = 0
    health_warned: bool = False

    def draw(self, count: int, questions: int, rng) -> list[int]:
        """The indices of the next ``count`` training questions (of ``questions``): the rest of the current pass,
        then new passes, each in an order shuffled by ``rng``."""
        out = []
        while len(out) < count:
            if not self.order:
                self.order = list(range(questions))
                rng.shuffle(self.order)
            out.append(self.order.pop())
        return out

    def count_init(self, generated: int, lengths: list[int]) -> None:
        """Count cache-init responses: ``generated`` tokens sampled for them, their ``lengths``."""
        self.tokens_generated += generated
        self.rollout_counts["init_responses"] += len(lengths)
        self.rollout_counts["init_length"] += sum(lengths)

    def count_rollout(self, lengths: list[int], groups: int, refreshed: int) -> None:
        """Count one step's training rollouts: the samples' generated ``lengths``, the groups and refreshes."""
        self.tokens_generated += sum(lengths)
        self.rollout_counts["tokens"] += sum(lengths)
        self.rollout_counts["samples"] += len(lengths)
        self.rollout_counts["groups"] += groups
        self.rollout_counts["refreshed"] += refreshed

    def summary(self, **before_timings) -> dict:
        """The run's part of the closing summary (``before_timings``: the trainer's keys, placed before the times):
        steps, tokens, timings, tokens per sample (and a full-path sample's), refreshes, final drift and the last
        step with a learning signal."""
        counts = self.rollout_counts
        return dict(steps=self.step, tokens_generated=self.tokens_generated, **before_timings, **self.timings,
                    tokens_per_sample=counts["tokens"] / max(counts["samples"], 1),
                    full_path_tokens_per_sample=counts["init_length"] / counts["init_responses"]
                    if counts["init_responses"] else None, cache_init=self.init_mode,
                    refreshes=counts.get("refreshed", 0),
                    refresh_share=counts.get("refreshed", 0) / max(counts.get("groups", 0), 1),
                    **{f"final_{k.split('/')[1]}": v for k, v in self.last_drift.items()},
                    last_signal_step=self.last_signal_step)

    def to_saved(self) -> dict:
        """The ``state.json`` fields (the step is saved by the checkpoint itself)."""
        return {"order": self.order, "timings": self.timings, "tokens_generated": self.tokens_generated,
                "rollout_counts": self.rollout_counts, "last_drift": self.last_drift, "cache_init": self.init_mode,
                "health": {"last_signal_step": self.last_signal_step, "no_signal_steps": self.no_signal_steps,
                           "warned": self.health_warned}}

    @classmethod
    def from_saved(cls, state: dict, cached: int, default_init_mode: str) -> RunState:
        """The run state of a checkpoint's ``state.json`` (``cached``: entries of its cache). Older checkpoints: a
        mean init length instead of the init counters (all entries initialised before step 1), and no init mode
        (then ``default_init_mode``: they were all eager or a file)."""
        counts, health = dict(state.get("rollout_counts", {})), state.get("health", {})
        if "init_mean_length" in counts:
            mean = counts.pop("init_mean_length")
            if mean:
                counts.update(init_responses=cached, init_length=round(mean * cached))
        return cls(init_mode=state.get("cache_init", default_init_mode), step=state["step"], order=state["order"],
                   timings=state["timings"], tokens_generated=state["tokens_generated"],
                   rollout_counts={**_counts(), **counts}, last_drift=state.get("last_drift", {}),
                   last_signal_step=health.get("last_signal_step"), no_signal_steps=health.get("no_signal_steps", 0),
                   health_warned=health.get("warned", False))

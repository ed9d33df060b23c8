"""Group statistics and the GRPO/DAPO switches of the RPO loop. The loss itself is rpo_kernels' policy loss.

Advantages are normalised within each group of G responses to one question (never across a micro-batch or a rank):
``A_i = (r_i - mean(r)) / (std(r) + eps)`` with the sample standard deviation (as TRL and verl compute it).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from rpo_kernels.reference import LOSS_TYPES

from .runtime.errors import UsageError, check_types

ALGORITHMS = ("grpo", "dapo")
MODES = ("full", "rpo")
# Keys of the objective section renamed since: old name -> new name (``objective.rollout`` named the mode).
RENAMED = {"rollout": "mode"}
LOSS_TOKENS = ("full", "suffix")


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """Advantages [B, G] from rewards [B, G] (fp32): centred per group, divided by (std + eps) when ``scale``."""
    if rewards.dim() != 2:
        raise ValueError(f"argument 'rewards' must be [groups, G], got shape {tuple(rewards.shape)}")
    if rewards.shape[1] < 2:
        raise ValueError(f"group advantages need G >= 2 responses per group, got G = {rewards.shape[1]}")
    if not bool(torch.isfinite(rewards).all()):
        bad = torch.nonzero(~torch.isfinite(rewards).all(1)).flatten().tolist()
        raise ValueError(f"rewards of group(s) {bad} are NaN or inf")
    r = rewards.float()
    centred = r - r.mean(1, keepdim=True)
    return centred / (r.std(1, keepdim=True) + eps) if scale else centred


@dataclass(frozen=True)
class ObjectiveConfig:
    """The objective of one run. ``preset("grpo"|"dapo")`` gives the paper's settings; fields override them.

    mode "full" is the GRPO/DAPO baseline, "rpo" samples suffixes of cached responses. loss_tokens "full" (paper
    default) trains on prefix + suffix tokens, "suffix" only on generated tokens. mu > 1 runs several updates per
    rollout batch; the old log-probs are the policy's own, recomputed once before the first update, not the
    sampler's: those cover only the suffix tokens (the prefix came from the cache) and carry the engine's numerics
    (a bf16 copy, other kernels), which would put a sampler/trainer mismatch into every ratio. With mu = 1 the
    ratio is 1 by construction and no old log-probs are computed. kl_clamp (10 by default, as verl clamps its k3; 0:
    off) clamps each token's k3 KL term (``rpo_kernels.policy_loss``): a kept prefix can hold a token the policy has
    since ruled out, whose k3 against the reference reaches thousands (measured: 2,300 on the recurrence task, a grad
    norm of 25,000 on recurrence_sum) and turns a step's update into that token's. With the clamp RPO-GRPO kept
    GRPO's accuracy on the recurrence task with no refresh at all (docs/method.md, 'The drift guard').
    """

    algorithm: str = "grpo"
    mode: str = "rpo"
    loss_type: str = "grpo"
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.04
    kl_clamp: float = 10.0
    adv_eps: float = 1e-4
    dynamic_sampling: bool = False
    max_resample_rounds: int = 3
    overlong_buffer: int = 0
    overlong_factor: float = 1.0
    length_aware: bool = True
    length_alpha: float = 0.01
    loss_tokens: str = "full"
    mu: int = 1

    def __post_init__(self):
        check_types(self, "objective")
        checks = (("algorithm", self.algorithm, ALGORITHMS), ("mode", self.mode, MODES),
                  ("loss_type", self.loss_type, LOSS_TYPES), ("loss_tokens", self.loss_tokens, LOSS_TOKENS))
        for name, value, allowed in checks:
            if value not in allowed:
                raise UsageError(f"objective.{name} must be one of {allowed}, got {value!r}")
        for name in ("eps_low", "eps_high", "beta", "kl_clamp", "adv_eps", "length_alpha", "overlong_factor"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise UsageError(f"objective.{name} must be a number >= 0, got {value!r}")
        if self.eps_low >= 1:
            raise UsageError(f"objective.eps_low must be < 1, got {self.eps_low}")
        for name in ("mu", "max_resample_rounds"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise UsageError(f"objective.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.overlong_buffer, int) or self.overlong_buffer < 0:
            raise UsageError(f"objective.overlong_buffer must be an int >= 0, got {self.overlong_buffer!r}")

    @classmethod
    def preset(cls, algorithm: str, **overrides) -> ObjectiveConfig:
        """GRPO: eps 0.2, beta 0.04, sequence-mean loss. DAPO: clip-higher 0.28, beta 0, token-level loss, dynamic
        sampling, overlong shaping over the last 1/8 of the length budget (set ``overlong_buffer``)."""
        if algorithm not in ALGORITHMS:
            raise UsageError(f"objective.algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        base = dict(algorithm="grpo", loss_type="grpo", eps_low=0.2, eps_high=0.2, beta=0.04)
        if algorithm == "dapo":
            base = dict(algorithm="dapo", loss_type="dapo", eps_low=0.2, eps_high=0.28, beta=0.0,
                        dynamic_sampling=True)
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise UsageError(f"unknown objective key(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{**base, **overrides})


def renamed_keys(section: dict) -> tuple[dict, list[str]]:
    """An objective section (a recipe's, or a config a checkpoint saved) with the keys of ``RENAMED`` under their
    names of now, and the old names it used; an old key given with its new name is an error naming both."""
    out, used = dict(section), []
    for old, new in RENAMED.items():
        if old in out:
            if new in out:
                raise UsageError(f"objective.{old} and objective.{new} are both given: objective.{old} is now "
                                 f"objective.{new}; keep only objective.{new}")
            out[new] = out.pop(old)
            used.append(old)
    return out, used

"""``RPOConfig``: TRL's ``GRPOConfig`` with the fields of RPO (``rpo_*``), checked on construction.

This module owns the optional import of TRL (and of accelerate, which comes with it): it needs ``trl`` (``pip install
-e ".[trl]"``) in the tested range ``TRL_RANGE``, since ``RPOTrainer`` overrides private methods of ``GRPOTrainer``
that change between TRL releases; anything else is refused with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from packaging.version import Version

from ..cache import DRIFT_STATS, CacheConfig
from ..cuts import TRUNCATION_MODES, TruncationConfig
from ..runtime.errors import UsageError
from .prefix_plan import PrefixSettings

TRL_RANGE = ("1.16", "1.17")  # tested: >= first, < second


def check_trl_version(version: str) -> None:
    """Raise ImportError unless TRL ``version`` is in ``TRL_RANGE``."""
    low, high = TRL_RANGE
    if not Version(low) <= Version(version) < Version(high):
        raise ImportError(f"rpo_train.integrations.trl is tested with trl>={low},<{high} (its RPOTrainer overrides "
                          f"GRPOTrainer internals); found trl {version}. Install it with: pip install 'trl>={low},"
                          f"<{high}'")


try:
    import trl
    from accelerate.utils import gather_object
    from trl import GRPOConfig, GRPOTrainer
except ImportError as exc:  # the optional extra is missing
    raise ImportError("rpo_train.integrations.trl needs TRL: pip install -e '.[trl]' (or pip install "
                      f"'trl>={TRL_RANGE[0]},<{TRL_RANGE[1]}')") from exc
check_trl_version(trl.__version__)

__all__ = ["GRPOTrainer", "RPOConfig", "TRL_RANGE", "check_trl_version", "gather_object"]
LOSS_TOKENS = ("full", "suffix")
CACHE_INITS = ("eager", "lazy")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class RPOConfig(GRPOConfig):
    """A ``GRPOConfig`` plus RPO's settings (the rpo-train recipe key each mirrors is in brackets):

    - cuts [truncation]: ``rpo_truncation`` fixed | dynamic | adaptive; ``rpo_max_cut`` L (fixed: m ~ U{0..L});
      ``rpo_cut_factor`` (dynamic: L = factor x the question's shortest last response); ``rpo_min_cut`` (adaptive);
    - ``rpo_suffix_budget``: max new tokens of a suffix; 0 = the cut m (the paper); prefix + suffix never exceed
      ``max_completion_length``;
    - cache [cache]: ``rpo_cache_epsilon`` (best response kept with this probability, else a random one);
      ``rpo_cache_init`` eager (one response per training question before the first step, the paper's) | lazy (a
      question's first group runs the full path); ``rpo_key_column`` (a dataset column that identifies a question;
      None: a hash of the prompt's token ids); the drift guard: ``rpo_refresh_stat`` (kl | m2 | flips | drop, see
      ``rpo_train.drift``) reaching ``rpo_refresh_drift`` sends a question down the full path (on by default: a
      cached token whose log-prob fell 4.6 nats since it was written, rpo-train's default; 0 turns it off, the
      paper's loop), as do
      ``rpo_max_reuses`` (reuses of a body) and ``rpo_full_share`` (a random share of groups, drawn every
      ``rpo_refresh_every``-th step);
    - ``rpo_loss_tokens``: full (prefix + suffix, the paper's) | suffix (only the sampled tokens: the prefix is
      masked from the loss as TRL masks tool output);
    - ``rpo_length_aware`` / ``rpo_length_alpha``: RPO's length-aware shaping of the correctness reward, the reward
      function at index ``rpo_correct_reward`` (a value > 0 marks a correct response).
    """

    rpo_truncation: str = field(default="fixed", metadata=_help("fixed | dynamic | adaptive"))
    rpo_max_cut: int = field(default=300, metadata=_help("L: the longest cut, in tokens (fixed, adaptive)"))
    rpo_cut_factor: float = field(default=0.5, metadata=_help("dynamic: L = factor x shortest last response"))
    rpo_min_cut: int = field(default=8, metadata=_help("adaptive: the smallest L (and the start)"))
    rpo_suffix_budget: int = field(default=0, metadata=_help("max new tokens of a suffix; 0: the cut m"))
    rpo_cache_epsilon: float = field(default=0.5, metadata=_help("probability of keeping a group's best response"))
    rpo_cache_init: str = field(default="eager", metadata=_help("eager | lazy"))
    rpo_key_column: str | None = field(default=None, metadata=_help("dataset column naming a question"))
    rpo_refresh_stat: str = field(default="drop", metadata=_help("kl | m2 | flips | drop: the drift statistic"))
    rpo_refresh_drift: float = field(default=4.6, metadata=_help("refresh at this drift (0: off, the paper's loop)"))
    rpo_full_share: float = field(default=0.0, metadata=_help("share of groups sent down the full path"))
    rpo_max_reuses: int = field(default=0, metadata=_help("full path after this many reuses of a body (0: off)"))
    rpo_refresh_every: int = field(default=1, metadata=_help("draw rpo_full_share on every k-th step only"))
    rpo_loss_tokens: str = field(default="full", metadata=_help("full | suffix"))
    rpo_length_aware: bool = field(default=True, metadata=_help("RPO's length-aware reward shaping"))
    rpo_length_alpha: float = field(default=0.01, metadata=_help("alpha of the length-aware shaping, per token"))
    rpo_correct_reward: int = field(default=0, metadata=_help("index of the correctness reward function"))

    def __post_init__(self):
        super().__post_init__()
        checks = [
            (self.rpo_truncation in TRUNCATION_MODES, "rpo_truncation", f"one of {TRUNCATION_MODES}"),
            (self.rpo_max_cut >= 0, "rpo_max_cut", "an int >= 0"),
            (0.0 < self.rpo_cut_factor <= 1.0, "rpo_cut_factor", "in (0, 1]"),
            (0 <= self.rpo_min_cut <= max(self.rpo_max_cut, 0) or self.rpo_truncation != "adaptive",
             "rpo_min_cut", "in [0, rpo_max_cut] with rpo_truncation='adaptive'"),
            (self.rpo_min_cut >= 0, "rpo_min_cut", "an int >= 0"),
            (self.rpo_suffix_budget >= 0, "rpo_suffix_budget", "an int >= 0 (0: the cut m)"),
            (0.0 <= self.rpo_cache_epsilon <= 1.0, "rpo_cache_epsilon", "in [0, 1]"),
            (self.rpo_cache_init in CACHE_INITS, "rpo_cache_init", f"one of {CACHE_INITS}"),
            (self.rpo_refresh_stat in DRIFT_STATS, "rpo_refresh_stat", f"one of {DRIFT_STATS}"),
            (self.rpo_refresh_drift >= 0, "rpo_refresh_drift", ">= 0 (0: off)"),
            (0.0 <= self.rpo_full_share <= 1.0, "rpo_full_share", "in [0, 1]"),
            (self.rpo_max_reuses >= 0, "rpo_max_reuses", "an int >= 0 (0: off)"),
            (self.rpo_refresh_every >= 1, "rpo_refresh_every", "an int >= 1"),
            (self.rpo_loss_tokens in LOSS_TOKENS, "rpo_loss_tokens", f"one of {LOSS_TOKENS}"),
            (self.rpo_length_alpha >= 0, "rpo_length_alpha", ">= 0"),
            (self.rpo_correct_reward >= 0, "rpo_correct_reward", "an int >= 0 (an index into reward_funcs)"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(f"RPOConfig.{name} must be {expected}, got {getattr(self, name)!r}")

    def prefix_settings(self) -> PrefixSettings:
        """The trainer-independent settings (``rpo_train.integrations.prefix_plan``)."""
        try:
            truncation = TruncationConfig(mode=self.rpo_truncation, max_cut=self.rpo_max_cut,
                                          factor=self.rpo_cut_factor, min_cut=self.rpo_min_cut)
            cache = CacheConfig(epsilon=self.rpo_cache_epsilon, full_share=self.rpo_full_share,
                                refresh_stat=self.rpo_refresh_stat, refresh_drift=float(self.rpo_refresh_drift),
                                max_reuses=self.rpo_max_reuses, refresh_every=self.rpo_refresh_every)
        except UsageError as exc:  # the checks above should have caught it; name the RPOConfig fields anyway
            raise ValueError(f"RPOConfig: {exc}") from exc
        return PrefixSettings(truncation, cache, self.rpo_suffix_budget, self.max_completion_length)

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
from .trl_rows import PrefixSettings

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

__all__ = ["GRPOTrainer", "RPOConfig", "SharedPrefixGRPOConfig", "TRL_RANGE", "check_trl_version", "gather_object"]
LOSS_TOKENS = ("full", "suffix")
CACHE_INITS = ("auto", "eager", "lazy")


def _help(text: str) -> dict:
    return {"help": text}


def _int_or_word(name: str, value, words: tuple[str, ...], low: int):
    """``value`` of field ``name`` as one of ``words`` or an int >= ``low`` (a string of digits, as a command line
    gives it, is converted); anything else is refused naming the field."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if value in words or (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        return value
    raise ValueError(f"RPOConfig.{name} must be one of {words} or an int >= {low}, got {value!r}")


@dataclass
class SharedPrefixGRPOConfig(GRPOConfig):
    """A ``GRPOConfig`` plus the shared-prefix training forward (``rpo_train.integrations.trl_shared``):

    - ``shared_forward``: rows of a training batch that share a prompt (and the start of their completions) run that
      shared part once, their own tokens against its one KV (on by default; checked against TRL's per-row forward
      on the first batch, which it replaces only if the log-probs agree); with transformers' generation, rows with
      the same input are also prefilled once;
    - ``shared_forward_min_reuse``: a batch whose token reuse (per-row tokens / packed tokens) is below this runs
      TRL's per-row forward (packing would save too little).
    """

    shared_forward: bool = field(default=True, metadata=_help("run each group's shared prompt/prefix once"))
    shared_forward_min_reuse: float = field(default=1.3, metadata=_help("per-row forward below this token reuse"))

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.shared_forward, bool):
            raise ValueError(f"{type(self).__name__}.shared_forward must be true or false, got "
                             f"{self.shared_forward!r}")
        try:
            self.shared_forward_min_reuse = float(self.shared_forward_min_reuse)
        except (TypeError, ValueError):
            self.shared_forward_min_reuse = float("nan")
        if not self.shared_forward_min_reuse >= 1.0:
            raise ValueError(f"{type(self).__name__}.shared_forward_min_reuse must be a number >= 1, got "
                             f"{self.shared_forward_min_reuse!r}")


@dataclass
class RPOConfig(SharedPrefixGRPOConfig):
    """A ``GRPOConfig`` plus RPO's settings (the rpo-train recipe key each mirrors is in brackets):

    - cuts [truncation]: ``rpo_max_cut`` L, "auto" (the default: L = ``rpo_cut_factor`` x the shortest response of
      the question's last group, the paper's dynamic L, so that L follows the data) or an int (m ~ U{0..L});
      ``rpo_truncation`` auto (dynamic with an "auto" L, else fixed) | fixed | dynamic | adaptive;
      ``rpo_min_cut`` (adaptive);
    - ``rpo_suffix_budget``: max new tokens of a suffix: "auto" (the default: up to ``max_completion_length`` in
      all, so a suffix can finish and only a full-length completion is truncated, as under GRPO), "m" (the cut m,
      the paper's; a suffix stopped by it has no EOS and TRL counts it as truncated) or an int cap;
    - cache [cache]: ``rpo_cache_epsilon`` (best response kept with this probability, else a random one);
      ``rpo_cache_init`` auto (lazy when the run visits fewer questions than the dataset holds, else eager) | eager
      (one response per training question before the first step, the paper's) | lazy (a question's first group
      runs the full path); ``rpo_key_column`` (a dataset column that identifies a question; None: a hash of the
      prompt's token ids); the drift guard: ``rpo_refresh_stat`` (kl | m2 | flips | drop, see ``rpo_train.drift``)
      reaching ``rpo_refresh_drift`` sends a question down the full path (on by default: a cached token whose
      log-prob fell 4.6 nats since it was written; 0 turns it off, the paper's loop), as do ``rpo_max_reuses``
      (reuses of a body) and ``rpo_full_share`` (a random share of groups, drawn every ``rpo_refresh_every``-th
      generation round);
    - ``rpo_loss_tokens``: full (prefix + suffix, the paper's) | suffix (only the sampled tokens: the prefix is
      masked from the loss as TRL masks tool output);
    - the shared-prefix training forward: ``shared_forward``, ``shared_forward_min_reuse`` (``SharedPrefixGRPOConfig``);
    - rewards (``rpo_train.integrations.trl_rewards``): ``rpo_correct_reward`` names the correctness reward (its
      name or index; needed with several reward functions); ``rpo_correct_threshold`` (correct: value >= it;
      None: value > 0, for rewards in [0, 1]); ``rpo_length_aware`` adds the paper's length-aware shaping as the
      reward component ``rpo_length`` (off by default: the user's rewards are what TRL sees), ``rpo_length_alpha``.
    """

    rpo_truncation: str = field(default="auto", metadata=_help("auto | fixed | dynamic | adaptive"))
    rpo_max_cut: str = field(default="auto", metadata=_help("L, the longest cut: auto | an int (tokens)"))
    rpo_cut_factor: float = field(default=0.1, metadata=_help("dynamic L = factor x shortest last response"))
    rpo_min_cut: int = field(default=8, metadata=_help("adaptive: the smallest L (and the start)"))
    rpo_suffix_budget: str = field(default="auto", metadata=_help("max new tokens of a suffix: auto | m | an int"))
    rpo_cache_epsilon: float = field(default=0.5, metadata=_help("probability of keeping a group's best response"))
    rpo_cache_init: str = field(default="auto", metadata=_help("auto | eager | lazy"))
    rpo_key_column: str | None = field(default=None, metadata=_help("dataset column naming a question"))
    rpo_refresh_stat: str = field(default="drop", metadata=_help("kl | m2 | flips | drop: the drift statistic"))
    rpo_refresh_drift: float = field(default=4.6, metadata=_help("refresh at this drift (0: off, the paper's loop)"))
    rpo_full_share: float = field(default=0.0, metadata=_help("share of groups sent down the full path"))
    rpo_max_reuses: int = field(default=0, metadata=_help("full path after this many reuses of a body (0: off)"))
    rpo_refresh_every: int = field(default=1, metadata=_help("draw rpo_full_share on every k-th round only"))
    rpo_loss_tokens: str = field(default="full", metadata=_help("full | suffix"))
    rpo_length_aware: bool = field(default=False, metadata=_help("add the length-aware reward component"))
    rpo_length_alpha: float = field(default=0.01, metadata=_help("alpha of the length-aware shaping, per token"))
    rpo_correct_reward: str | None = field(default=None, metadata=_help("name or index of the correctness reward"))
    rpo_correct_threshold: float | None = field(default=None, metadata=_help("correct: reward >= this"))

    def __post_init__(self):
        super().__post_init__()
        self.rpo_max_cut = _int_or_word("rpo_max_cut", self.rpo_max_cut, ("auto",), 0)
        self.rpo_suffix_budget = _int_or_word("rpo_suffix_budget", self.rpo_suffix_budget, ("auto", "m"), 1)
        if self.rpo_correct_reward is not None:
            self.rpo_correct_reward = str(self.rpo_correct_reward)
        numbers = {"rpo_min_cut": int, "rpo_max_reuses": int, "rpo_refresh_every": int, "rpo_cut_factor": float,
                   "rpo_cache_epsilon": float, "rpo_refresh_drift": float, "rpo_full_share": float,
                   "rpo_length_alpha": float, "rpo_correct_threshold": float}
        for name, kind in numbers.items():
            value = getattr(self, name)
            if value is None and name == "rpo_correct_threshold":
                continue
            try:
                if isinstance(value, bool) or float(value) != kind(float(value)):
                    raise ValueError
                setattr(self, name, kind(float(value)))
            except (TypeError, ValueError):
                raise ValueError(f"RPOConfig.{name} must be {'an int' if kind is int else 'a number'}, got "
                                 f"{value!r}") from None
        auto_cut = self.rpo_max_cut == "auto"
        checks = [
            (self.rpo_truncation in ("auto", *TRUNCATION_MODES), "rpo_truncation",
             f"auto or one of {TRUNCATION_MODES}"),
            (not auto_cut or self.rpo_truncation in ("auto", "dynamic"), "rpo_truncation",
             "auto or dynamic when rpo_max_cut is 'auto' (give rpo_max_cut an int for fixed or adaptive cuts)"),
            (0.0 < self.rpo_cut_factor <= 1.0, "rpo_cut_factor", "in (0, 1]"),
            (self.rpo_min_cut >= 0, "rpo_min_cut", "an int >= 0"),
            (self.rpo_truncation != "adaptive" or self.rpo_min_cut <= self.rpo_max_cut, "rpo_min_cut",
             "in [0, rpo_max_cut] with rpo_truncation='adaptive'"),
            (0.0 <= self.rpo_cache_epsilon <= 1.0, "rpo_cache_epsilon", "in [0, 1]"),
            (self.rpo_cache_init in CACHE_INITS, "rpo_cache_init", f"one of {CACHE_INITS}"),
            (self.rpo_refresh_stat in DRIFT_STATS, "rpo_refresh_stat", f"one of {DRIFT_STATS}"),
            (self.rpo_refresh_drift >= 0, "rpo_refresh_drift", ">= 0 (0: off)"),
            (0.0 <= self.rpo_full_share <= 1.0, "rpo_full_share", "in [0, 1]"),
            (self.rpo_max_reuses >= 0, "rpo_max_reuses", "an int >= 0 (0: off)"),
            (self.rpo_refresh_every >= 1, "rpo_refresh_every", "an int >= 1"),
            (self.rpo_loss_tokens in LOSS_TOKENS, "rpo_loss_tokens", f"one of {LOSS_TOKENS}"),
            (self.rpo_length_alpha >= 0, "rpo_length_alpha", ">= 0"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(f"RPOConfig.{name} must be {expected}, got {getattr(self, name)!r}")

    @property
    def rpo_truncation_mode(self) -> str:
        """``rpo_truncation`` with "auto" resolved: dynamic for an "auto" L, else fixed."""
        if self.rpo_truncation != "auto":
            return self.rpo_truncation
        return "dynamic" if self.rpo_max_cut == "auto" else "fixed"

    def prefix_settings(self) -> PrefixSettings:
        """The trainer-independent settings (``rpo_train.integrations.trl_rows``)."""
        try:
            truncation = TruncationConfig(mode=self.rpo_truncation_mode,
                                          max_cut=0 if self.rpo_max_cut == "auto" else self.rpo_max_cut,
                                          factor=self.rpo_cut_factor, min_cut=self.rpo_min_cut)
            cache = CacheConfig(epsilon=self.rpo_cache_epsilon, full_share=self.rpo_full_share,
                                refresh_stat=self.rpo_refresh_stat, refresh_drift=float(self.rpo_refresh_drift),
                                max_reuses=self.rpo_max_reuses, refresh_every=self.rpo_refresh_every)
        except UsageError as exc:  # the checks above should have caught it; name the RPOConfig fields anyway
            raise ValueError(f"RPOConfig: {exc}") from exc
        return PrefixSettings(truncation, cache, self.rpo_suffix_budget, self.max_completion_length)

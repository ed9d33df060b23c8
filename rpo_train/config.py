"""Run configuration: dataclasses validated on construction, loaded from YAML recipes with ``yaml.safe_load``.

A recipe is a YAML mapping whose sections match ``RunConfig``'s fields; unknown keys are errors. Overrides use dotted
keys (``objective.beta=0.0``, ``steps=20``) and are parsed as YAML scalars. The ``data:`` section is the type its
``task`` names (``rpo_train.data.config``: bundled task, local files or reasoning-gym), each with its own keys. A
renamed key (``objective.rollout``, now ``objective.mode``: ``rpo_train.objectives.RENAMED``) is read under its new
name, from a recipe or an override with a note on stderr, from a config a checkpoint saved silently.

Everything is checked when the config is built, except the ``"auto"`` values that depend on the machine or the data,
which only the run's start can know: ``dtype`` / ``rollout.dtype`` (``rpo_train.model.precision.resolve_precision``),
``optim.policy_forward`` (the trainer, by ``objective.mode`` and the parallelism) and ``cache.init`` (by the
number of training questions, ``rpo_train.cache_init.init_mode``).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .cache import CacheConfig
from .cuts import TruncationConfig
from .data.config import BundledData, DataSection, GymData, build_data_section, saved_data_section, switch_source
from .guard import resolve_guard
from .objectives import RENAMED, ObjectiveConfig, renamed_keys
from .rollout.params import SamplingParams
from .runtime.errors import UsageError, check_types

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
ENGINES = ("native", "hf", "vllm")
REWARD_NAMES = ("exact", "math", "task")
DTYPES = ("float32", "bfloat16", "float16")
# "auto": prefix_once when objective.mode is rpo (groups share a prompt + prefix), else plain.
POLICY_FORWARDS = ("auto", "plain", "prefix_once")
# Under torchrun: "ddp" keeps a whole model per rank; "fsdp" shards the decoder layers (rpo_train.runtime.sharding).
PARALLEL = ("ddp", "fsdp")


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise UsageError(message)


@dataclass(frozen=True)
class RolloutConfig:
    """engine: native | hf | vllm. suffix_budget: "m" (each suffix gets at most m new tokens, the paper's setting)
    or a fixed number of tokens. max_response_len bounds prefix + suffix. dtype: the engine's copy of the weights;
    "auto" = the run's compute dtype (bf16 for fp32 master weights on a GPU or, with ``dtype: auto``, on a CPU with
    bf16 instructions; see ``rpo_train.model.precision``). kv_budget_gib: the native engine's KV memory (its lanes,
    ``rpo_train.rollout.config.NativeEngineConfig``); what does not fit waits for a free lane, so a GPU run with
    long responses wants more than the 1 GiB default (docs/rollout.md, "How much KV memory")."""

    engine: str = "native"
    group_size: int = 6
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    max_response_len: int = 4096
    suffix_budget: str | int = "m"
    dtype: str = "auto"
    kv_budget_gib: float = 1.0

    def __post_init__(self):
        check_types(self, "rollout")
        _require(self.kv_budget_gib > 0, f"rollout.kv_budget_gib must be > 0, got {self.kv_budget_gib}")
        _require(self.engine in ENGINES, f"rollout.engine must be one of {ENGINES}, got {self.engine!r}")
        _require(self.dtype in ("auto",) + DTYPES, f"rollout.dtype must be one of {('auto',) + DTYPES}, "
                                                   f"got {self.dtype!r}")
        _require(isinstance(self.group_size, int) and self.group_size >= 2,
                 f"rollout.group_size must be an int >= 2 (group advantages need G >= 2), got {self.group_size!r}")
        _require(self.temperature > 0, f"rollout.temperature must be > 0, got {self.temperature}")
        _require(0 < self.top_p <= 1, f"rollout.top_p must be in (0, 1], got {self.top_p}")
        _require(isinstance(self.top_k, int) and self.top_k >= 0,
                 f"rollout.top_k must be an int >= 0, got {self.top_k!r}")
        _require(isinstance(self.max_response_len, int) and self.max_response_len >= 1,
                 f"rollout.max_response_len must be an int >= 1, got {self.max_response_len!r}")
        _require(self.suffix_budget == "m" or (isinstance(self.suffix_budget, int) and self.suffix_budget >= 1),
                 f"rollout.suffix_budget must be 'm' or an int >= 1, got {self.suffix_budget!r}")

    def sampling_params(self, max_new_tokens, *, seed, stop_token_ids) -> SamplingParams:
        """This section's temperature, top_p and top_k with one call's budgets (an int, or one per prompt), seeds
        (an int, one per prompt, or None) and stop token ids."""
        return SamplingParams(max_new_tokens, self.temperature, self.top_p, self.top_k, stop_token_ids, seed)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW settings and the policy forward: ``policy_forward`` plain | prefix_once | auto (see
    ``rpo_train.model.policy``); ``gradient_checkpointing`` recomputes decoder layers in the backward; ``parallel``
    ddp | fsdp under torchrun (see ``rpo_train.runtime.distributed`` and ``rpo_train.runtime.sharding``).
    ``max_nonfinite_steps``: a step whose loss or gradient norm is NaN or inf skips its update; this many such steps
    in a row stop the run (``rpo_train.update_guard``)."""

    lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    micro_batch: int = 16
    policy_forward: str = "auto"
    gradient_checkpointing: bool = False
    parallel: str = "ddp"
    max_nonfinite_steps: int = 3

    def __post_init__(self):
        check_types(self, "optim")
        _require(self.max_nonfinite_steps >= 1,
                 f"optim.max_nonfinite_steps must be an int >= 1, got {self.max_nonfinite_steps!r}")
        _require(self.parallel in PARALLEL, f"optim.parallel must be one of {PARALLEL}, got {self.parallel!r}")
        _require(self.policy_forward in POLICY_FORWARDS,
                 f"optim.policy_forward must be one of {POLICY_FORWARDS}, got {self.policy_forward!r}")
        _require(isinstance(self.gradient_checkpointing, bool),
                 f"optim.gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}")
        _require(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _require(self.warmup_steps >= 0 and self.weight_decay >= 0 and self.grad_clip > 0,
                 "optim.warmup_steps and optim.weight_decay must be >= 0, optim.grad_clip > 0")
        _require(isinstance(self.micro_batch, int) and self.micro_batch >= 1,
                 f"optim.micro_batch must be an int >= 1, got {self.micro_batch!r}")


@dataclass(frozen=True)
class RunConfig:
    """The whole run. ``eval_samples``: k > 0 adds pass@k and mean@k over k samples per held-out question at the
    rollout temperature to each evaluation (``rpo_train.evaluation``). ``health_window``: after this many steps in a
    row without a learning signal (every group's rewards equal) the run says so once, naming the likely causes
    (``rpo_train.health``); 0 turns that off."""

    model: str = ""
    out_dir: str = "runs/rpo"
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    steps: int = 100
    batch_questions: int = 16
    eval_every: int = 20
    eval_max_new_tokens: int = 128
    eval_samples: int = 0
    save_every: int = 20
    reward: str = "exact"
    health_window: int = 10
    data: DataSection = field(default_factory=BundledData)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    truncation: TruncationConfig = field(default_factory=TruncationConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)

    def __post_init__(self):
        check_types(self)
        _require(bool(self.model), "model (a checkpoint directory) is required")
        _require(self.device == "cpu" or re.fullmatch(r"cuda(:\d+)?", self.device) is not None,
                 f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        _require(self.dtype in ("auto",) + DTYPES, f"dtype must be one of {('auto',) + DTYPES}, got {self.dtype!r}")
        _require(self.reward in REWARD_NAMES, f"reward must be one of {REWARD_NAMES}, got {self.reward!r}")
        _require(self.reward != "task" or isinstance(self.data, GymData),
                 "reward 'task' (the dataset's own scorer) needs data.task reasoning_gym")
        for name in ("steps", "batch_questions", "eval_every", "save_every", "eval_max_new_tokens"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value >= 1, f"{name} must be an int >= 1, got {value!r}")
        _require(self.eval_samples >= 0,
                 f"eval_samples must be an int >= 0 (0: greedy only), got {self.eval_samples!r}")
        _require(self.health_window >= 0, f"health_window must be an int >= 0 (0: off), got {self.health_window!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def saved_section(self, key: str, saved: dict):
        """Section (or top-level setting) ``key`` of a config an earlier run saved (``to_dict``), as this version
        writes it: settings added since at their defaults, renamed keys under their new names
        (``rpo_train.objectives.renamed_keys``), and a data section saved in the old flat form mapped to its source's
        section (``rpo_train.data.config.saved_data_section``)."""
        value = saved.get(key)
        if key == "data" and isinstance(value, dict):
            return saved_data_section(value)
        if key == "objective" and isinstance(value, dict):
            value = renamed_keys(value)[0]
        default = dataclasses.asdict(type(self)(model="-"))[key]
        if isinstance(value, dict) and isinstance(default, dict):
            return {**default, **value}
        return value

    def notes(self) -> list[str]:
        """Valid settings known to cost accuracy, one line each: why, and what to change."""
        out = []
        if self.objective.mode == "rpo" and self.objective.beta == 0 and not self.cache.refreshes:
            out.append("objective.beta = 0 with objective.mode rpo and no cache refresh: the kept prefixes come "
                       "from the cache and are never sampled by the current policy, so nothing holds the policy's "
                       "own generation of them in place (it drifts unseen); set the drift guard, for example "
                       "cache.refresh_stat=flips cache.refresh_drift=2 (docs/method.md, 'The drift guard'), or "
                       "objective.beta")
        return out


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
SECTIONS = {"data": DataSection, "rollout": RolloutConfig, "optim": OptimConfig, "objective": ObjectiveConfig,
            "truncation": TruncationConfig, "cache": CacheConfig}
MOVED = {"cache_epsilon": "cache.epsilon", "cache_init_path": "cache.init_path",
         "cache_resample_no_answer": "cache.resample_no_answer"}


def _number(value):
    """``value``, or the float it spells when YAML 1.1 read it as a string (``1e-6``, with no dot)."""
    if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
        return float(value)
    return value


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise UsageError(f"{where} must be a mapping of keys to values, got {type(values).__name__}")
    if cls is DataSection:
        return build_data_section({k: _number(v) for k, v in values.items()})
    known = {f.name: f for f in dataclasses.fields(cls)}
    moved = sorted(k for k in values if cls is RunConfig and k in MOVED)
    if moved:
        raise UsageError(f"{where}: key {moved[0]!r} is now {MOVED[moved[0]]!r} (the cache: section)")
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UsageError(f"unknown key(s) {unknown} in {where}; known: {sorted(known)}")
    kwargs = {}
    for key, value in values.items():
        if key in SECTIONS and cls is RunConfig:
            value = _build(SECTIONS[key], value, key)
        kwargs[key] = _number(value)
    if cls is ObjectiveConfig and "algorithm" in kwargs:
        algorithm = kwargs.pop("algorithm")
        return ObjectiveConfig.preset(algorithm, **kwargs)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise UsageError(f"{where}: {exc}") from exc


def _renamed(raw: dict, overrides: list[str]) -> None:
    """Put the objective keys of ``raw`` (a recipe's mapping, changed in place) renamed since under their new names
    (``rpo_train.objectives.renamed_keys``: an old key given with its new name, both in the recipe or both in the
    overrides, is an error naming both; an override of either name replaces the recipe's); one note on stderr per
    old key used (the overrides are renamed as they are applied)."""
    used = []
    if isinstance(raw.get("objective"), dict):
        raw["objective"], used = renamed_keys(raw["objective"])
    keys = (item.split("=", 1)[0].strip() for item in overrides if "=" in item)
    used += renamed_keys(dict.fromkeys(k.split(".", 1)[1] for k in keys if k.startswith("objective.")))[1]
    for old in dict.fromkeys(used):
        print(f"note: objective.{old} is now objective.{RENAMED[old]} (same values); rename it in the recipe or "
              "override", file=sys.stderr)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML scalars) to a raw recipe mapping. ``data.task`` set to
    another source drops the recipe's data keys that source does not take (``rpo_train.data.config.switch_source``).
    A renamed objective key, in the recipe or an override, is read under its new name (``_renamed``)."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    _renamed(raw, overrides)
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"override {item!r} must look like key=value or section.key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise UsageError(f"override {item!r}: the key {key!r} has an empty part")
        if len(parts) == 2 and parts[0] == "objective" and parts[1] in RENAMED:
            parts[1] = RENAMED[parts[1]]
        target = raw
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise UsageError(f"override {item!r}: {part!r} is not a section")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise UsageError(f"override {item!r}: the value is not a YAML scalar ({_yaml_problem(exc)})") from exc
        if parts == ["data", "task"]:  # another source: the recipe's keys of the one it replaces go
            target = raw["data"] = switch_source(target, parsed)
        target[parts[-1]] = parsed
    return raw


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The problem and its line/column of a YAML error, on one line."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(exc, 'problem', None) or exc}{where}"


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> RunConfig:
    """Load a bundled recipe by name (``rpo_train/recipes/NAME.yaml``) or a YAML file, then apply overrides; the
    drift guard left to the run is resolved from the objective (``rpo_train.guard``)."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") and len(path.parts) == 1:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise UsageError(f"recipe {name_or_path!r} not found (looked at {path}); bundled recipes: {names}")
    try:
        with path.open() as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise UsageError(f"recipe {path}: not valid YAML: {_yaml_problem(exc)}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"recipe {path}: cannot be read ({exc})") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UsageError(f"recipe {path}: expected a mapping of keys to values at the top, got a "
                         f"{type(raw).__name__}")
    raw = apply_overrides(raw, list(overrides))
    return resolve_guard(_build(RunConfig, raw, f"recipe {path.name}"), raw)

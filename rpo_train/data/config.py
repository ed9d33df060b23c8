"""The ``data:`` section of a recipe: one frozen dataclass per source, chosen by ``task``.

- ``BundledData`` (``task``: recurrence, recurrence_sum, addition): the bundled synthetic tasks (``rpo_train.task``);
- ``FileData`` (``task: hf``): local files through 🤗 datasets (``rpo_train.data.files``);
- ``GymData`` (``task: reasoning_gym``): reasoning-gym's generators (``rpo_train.data.gym``).

``build_data_section`` turns a recipe's mapping into the type its ``task`` names; a key of another source is an
error naming the key, the task and the keys that task takes. ``saved_data_section`` reads the section a checkpoint
saved, including the flat 18-field form written before the sources had their own types.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..runtime.errors import UsageError, check_types
from ..task import TASKS, make_task

ANSWER_FORMATS = ("tag", "line")
DEFAULT_TEMPLATE = "{question}\nGive your final answer between <answer> and </answer>."


@dataclass(frozen=True)
class BundledData:
    """A bundled task: "recurrence" (long reasoning decided at its end, ``terms`` steps), "recurrence_sum" (its
    closing sums the last three terms) or "addition" (column addition decided early, ``digits`` per operand);
    ``n_train`` / ``n_test`` disjoint questions drawn from ``seed``. The defaults are the default recipe's."""

    task: str = "recurrence"
    n_train: int = 400
    n_test: int = 200
    digits: int = 5
    terms: int = 17
    seed: int = 1234

    def __post_init__(self):
        check_types(self, "data")
        if self.task not in TASKS:
            raise UsageError(f"data.task must be one of {DATA_TASKS}, got {self.task!r}")
        make_task(self)  # the task's own checks (data.terms, data.digits, sizes), each naming its field


@dataclass(frozen=True)
class FileData:
    """Local files (``task: hf``): ``path`` and its ``split``, held out from ``test_path`` or ``test_split`` (else
    the first tenth of ``path``); ``prompt_field``, ``answer_field`` and ``id_field`` name (dotted) columns."""

    task: str = "hf"
    path: str | None = None
    test_path: str | None = None
    split: str = "train"
    test_split: str | None = None
    prompt_field: str = "question"
    answer_field: str = "answer"
    id_field: str | None = None

    def __post_init__(self):
        check_types(self, "data")
        if self.task != "hf":
            raise UsageError(f"data.task of local files is 'hf', got {self.task!r}")
        if not self.path:
            raise UsageError("data.path is required when data.task is 'hf'")


@dataclass(frozen=True)
class GymData:
    """reasoning-gym (``task: reasoning_gym``): ``name`` with ``options`` (its config), or ``mix`` ({name: weight},
    ``options`` then {name: config}); ``n_train`` / ``n_test`` questions from ``seed``; ``prompt_template`` asks for
    the answer as ``answer_format`` says ("tag": between <answer> tags, "line": a last ``Answer: ...`` line)."""

    task: str = "reasoning_gym"
    name: str | None = None
    mix: dict | None = None
    options: dict = field(default_factory=dict)
    prompt_template: str = DEFAULT_TEMPLATE
    answer_format: str = "tag"
    n_train: int = 2000
    n_test: int = 200
    seed: int = 1234

    def __post_init__(self):
        check_types(self, "data")
        if self.task != "reasoning_gym":
            raise UsageError(f"data.task of reasoning-gym is 'reasoning_gym', got {self.task!r}")
        if bool(self.name) == bool(self.mix):
            raise UsageError("data.task reasoning_gym needs exactly one of data.name (a dataset) and data.mix "
                             "({name: weight})")
        if self.answer_format not in ANSWER_FORMATS:
            raise UsageError(f"data.answer_format must be one of {ANSWER_FORMATS}, got {self.answer_format!r}")
        if "{question}" not in self.prompt_template:
            raise UsageError(f"data.prompt_template must contain {{question}}, got {self.prompt_template!r}")
        if self.n_train < 1 or self.n_test < 1:
            raise UsageError(f"data.n_train and data.n_test must be >= 1, got {self.n_train}, {self.n_test}")


DataSection = BundledData | FileData | GymData
SOURCES = {**{task: BundledData for task in TASKS}, "hf": FileData, "reasoning_gym": GymData}
DATA_TASKS = tuple(SOURCES)
LABELS = {BundledData: "/".join(TASKS), FileData: "hf", GymData: "reasoning_gym"}


def source_of(task) -> type:
    """The section type of ``data.task`` = ``task``; a ``UsageError`` for a task no source has."""
    if not isinstance(task, str):
        raise UsageError(f"data.task must be a string, got {task!r}")
    if task == "jsonl":
        raise UsageError("data.task 'jsonl' is now 'hf', which reads .json/.jsonl/.csv/.parquet files and "
                         "save_to_disk folders (set data.task=hf)")
    if task not in SOURCES:
        raise UsageError(f"data.task must be one of {DATA_TASKS}, got {task!r}")
    return SOURCES[task]


def keys_of(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def switch_source(values: dict, task) -> dict:
    """``values`` (a recipe's data mapping) once an override sets its task to ``task``: when that changes the
    source, the keys the new source does not take are dropped (they described the source it replaced)."""
    old, new = values.get("task", BundledData.task), task
    if not (isinstance(old, str) and isinstance(new, str)) or SOURCES.get(old) is SOURCES.get(new):
        return values
    return {k: v for k, v in values.items() if new not in SOURCES or k in keys_of(SOURCES[new])}


def build_data_section(values: dict) -> DataSection:
    """The section type ``values["task"]`` names (default: ``BundledData.task``), built from ``values``; a key of
    another source (or of none) is a ``UsageError`` naming it, the task and the keys that task takes."""
    task = values.get("task", BundledData.task)
    cls = source_of(task)
    wrong = sorted(set(values) - set(keys_of(cls)))
    if wrong:
        owners = [label for c, label in LABELS.items() if wrong[0] in keys_of(c)]
        belongs = f" (a key of data.task {' and '.join(owners)})" if owners else ""
        raise UsageError(f"data.{wrong[0]} is not a key of data.task {task}{belongs}; data.task {task} takes "
                         f"{keys_of(cls)}")
    return cls(**values)


# The flat DataConfig that checkpoints written before the per-source sections saved, with its defaults: a field of
# another source at its old default is dropped when such a section is read back.
FLAT_DEFAULTS = {"task": "addition", "path": None, "test_path": None, "split": "train", "test_split": None,
                 "prompt_field": "question", "answer_field": "answer", "id_field": None, "name": None, "mix": None,
                 "options": {}, "prompt_template": DEFAULT_TEMPLATE, "answer_format": "tag", "n_train": 2000,
                 "n_test": 200, "digits": 5, "terms": 17, "seed": 1234}


def saved_data_section(saved: dict) -> dict:
    """The data section a checkpoint saved, as this version writes it (``dataclasses.asdict`` of its source's
    section): settings added since at their defaults; from an old flat section, the fields of other sources dropped
    where they hold their old defaults and kept otherwise (a changed setting, which the resume then refuses)."""
    task = saved.get("task", FLAT_DEFAULTS["task"])
    cls = SOURCES.get(task)
    if cls is None:
        return dict(saved)
    own = set(keys_of(cls))
    foreign = {k: v for k, v in saved.items() if k not in own and not (k in FLAT_DEFAULTS and FLAT_DEFAULTS[k] == v)}
    defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                for f in dataclasses.fields(cls)}
    return {**defaults, **{k: v for k, v in saved.items() if k in own}, **foreign}

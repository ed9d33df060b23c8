"""Rows from local data files through 🤗 datasets, offline (``data.task: hf``).

``data.path`` is a .json/.jsonl/.csv/.parquet file, a folder of such files (one format), or a folder written by
``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``; ``data.split`` picks its split. The held-out rows come from
``data.test_path`` or ``data.test_split``, else the first tenth of the training file. ``data.prompt_field``,
``data.answer_field`` and ``data.id_field`` name columns, dotted for nested ones (``meta.question``); a prompt may be
chat messages (a list of ``{"role", "content"}``), which the tokenizer's chat template turns into the prompt. Every
problem names the file, the row (1-based) and the field.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from ..runtime.errors import MissingPathError, UsageError, one_line

BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _first_bad_json_line(path: Path) -> str:
    """Where a JSON Lines file first fails to parse, for the error message ('' when every line parses)."""
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as exc:
                    return f"{path}:{n}: not valid JSON ({exc.msg} at column {exc.colno})"
    return ""


@contextlib.contextmanager
def _quiet_datasets():
    """datasets logs a failed file with its traceback; the error raised here says it in one line instead."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_split(path: str, split: str, field: str):
    """The ``datasets.Dataset`` of ``split`` at ``path`` (the config field ``field`` names it), read offline."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only: never ask a hub for anything
    from datasets import DatasetDict, load_dataset, load_from_disk

    source = Path(path)
    if not source.exists():
        raise MissingPathError(f"{field}={path}: no such file or folder (expected a .json/.jsonl/.csv/.parquet file, "
                               "a folder of them, or a save_to_disk folder)")
    if source.is_dir() and _is_saved_dataset(source):
        data = load_from_disk(str(source))
        if isinstance(data, DatasetDict):
            if split not in data:
                raise UsageError(f"{field}={path}: no split {split!r}; it has {sorted(data)} (data.split)")
            return data[split]
        return data
    files = sorted(p for p in source.iterdir() if p.suffix in BUILDERS) if source.is_dir() else [source]
    builders = {BUILDERS.get(p.suffix) for p in files}
    if not files or None in builders or len(builders) != 1:
        raise UsageError(f"{field}={path}: expected .json, .jsonl, .csv or .parquet files of one format, got "
                         f"{sorted(p.name for p in files) or 'none'}")
    builder = builders.pop()
    if builder != "parquet" and all(not p.read_bytes().strip() for p in files):
        raise UsageError(f"{field}={path}: no rows (the file is empty)")
    try:
        with _quiet_datasets():
            return load_dataset(builder, data_files={split: [str(p) for p in files]}, split=split)
    except Exception as exc:  # noqa: BLE001 - a malformed user file: name it (and the JSON line when one fails)
        bad = next((where for p in files if p.suffix in (".json", ".jsonl") for where in [_first_bad_json_line(p)]
                    if where), "")
        raise UsageError(bad or f"{field}={path}: cannot be read ({one_line(exc)[:300]})") from exc


def field_value(row: dict, dotted: str):
    """``row["a"]["b"]`` for ``dotted`` = "a.b"; KeyError when a part is missing."""
    value = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(part)
        value = value[part]
    return value


def _prompt(value, where: str):
    """A prompt: text, or chat messages kept as a list of {"role", "content"}."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) and {"role", "content"} <= set(m)
                                                 for m in value):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    raise UsageError(f"{where}: expected text or chat messages (a list of {{'role', 'content'}}), got "
                     f"{type(value).__name__} {str(value)[:60]!r}")


def to_rows(dataset, cfg, source: str, split: str) -> list[dict]:
    """``{"id", "question", "answer"}`` rows of ``dataset``, the ``split`` read from ``source``."""
    if len(dataset) == 0:
        raise UsageError(f"{source}: no rows in split {split!r}")
    rows = []
    for n, row in enumerate(dataset, 1):
        values = {}
        for key, name in ((cfg.prompt_field, "data.prompt_field"), (cfg.answer_field, "data.answer_field"),
                          (cfg.id_field, "data.id_field")):
            if key is None:
                continue
            try:
                value = field_value(row, key)
            except KeyError:
                raise UsageError(f"{source}: row {n} has no field {key!r} ({name}); its fields: {sorted(row)}") \
                    from None
            if value is None or value == "":
                raise UsageError(f"{source}: row {n} has an empty {key!r} ({name})")
            values[name] = value
        rows.append({"id": str(values.get("data.id_field", f"{Path(source).stem}-{n}")),
                     "question": _prompt(values["data.prompt_field"], f"{source}: row {n}, field {cfg.prompt_field!r}"),
                     "answer": str(values["data.answer_field"])})
    return rows


def file_rows(cfg) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows) of a ``data.task: hf`` config."""
    train = to_rows(load_split(cfg.path, cfg.split, "data.path"), cfg, cfg.path, cfg.split)
    if cfg.test_path:
        split = cfg.test_split or cfg.split
        return train, to_rows(load_split(cfg.test_path, split, "data.test_path"), cfg, cfg.test_path, split)
    if cfg.test_split:
        return train, to_rows(load_split(cfg.path, cfg.test_split, "data.path"), cfg, cfg.path, cfg.test_split)
    cut = max(1, len(train) // 10)
    return train[cut:], train[:cut]

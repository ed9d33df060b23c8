"""Training data: rows ``{"id", "question", "answer"}`` from a bundled task or a local JSONL file, and prompts as
token ids (the tokenizer's chat template when it has one)."""

from __future__ import annotations

import json
from pathlib import Path

from .config import DataConfig
from .errors import MissingPathError, UsageError
from .task import make_task


def _read_jsonl(path: str, cfg: DataConfig, field: str) -> list[dict]:
    """Rows of the JSONL file at ``path`` (the config field ``field`` names it); errors name the file and row."""
    file = Path(path)
    if not file.is_file():
        raise MissingPathError(f"{field}={path}: no such file (expected a JSONL file, one JSON object per line)")
    rows = []
    try:
        with file.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UsageError(f"{file}:{n}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
                if not isinstance(row, dict):
                    raise UsageError(f"{file}:{n}: expected a JSON object, got {type(row).__name__}")
                for key, name in ((cfg.prompt_field, "data.prompt_field"), (cfg.answer_field, "data.answer_field")):
                    if row.get(key) in (None, ""):
                        raise UsageError(f"{file}:{n}: row has no {key!r} field ({name}); its keys: {sorted(row)}")
                rows.append({"id": str(row.get("id", f"{file.stem}-{n}")), "question": str(row[cfg.prompt_field]),
                             "answer": str(row[cfg.answer_field])})
    except UnicodeDecodeError as exc:
        raise UsageError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if not rows:
        raise UsageError(f"{file}: no rows (an empty file or only blank lines)")
    return rows


def load_rows(cfg: DataConfig) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows)."""
    if cfg.task != "jsonl":
        return make_task(cfg).splits()
    train = _read_jsonl(cfg.path, cfg, "data.path")
    if cfg.test_path:
        return train, _read_jsonl(cfg.test_path, cfg, "data.test_path")
    cut = max(1, len(train) // 10)
    return train[cut:], train[:cut]


def encode_prompt(tokenizer, question: str) -> list[int]:
    """Token ids of the prompt: the chat template when the tokenizer has one, else BOS + the question's tokens."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        return [int(t) for t in (ids["input_ids"] if hasattr(ids, "keys") else ids)]
    ids = tokenizer.encode(question, add_special_tokens=False)
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + list(ids)

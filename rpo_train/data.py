"""Training data: rows ``{"id", "question", "answer"}`` from the bundled task or a local JSONL file, and prompts as
token ids (the tokenizer's chat template when it has one)."""

from __future__ import annotations

import json
from pathlib import Path

from .config import DataConfig
from .task.addition import AdditionTask


def _read_jsonl(path: str, cfg: DataConfig) -> list[dict]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"data file not found: {file}")
    rows = []
    with file.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            for key in (cfg.prompt_field, cfg.answer_field):
                if row.get(key) in (None, ""):
                    raise ValueError(f"{file}:{n}: row has no {key!r} field")
            rows.append({"id": str(row.get("id", f"{file.stem}-{n}")), "question": str(row[cfg.prompt_field]),
                         "answer": str(row[cfg.answer_field])})
    if not rows:
        raise ValueError(f"{file}: no rows")
    return rows


def load_rows(cfg: DataConfig) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows)."""
    if cfg.task == "addition":
        return AdditionTask(cfg.digits, cfg.n_train, cfg.n_test, cfg.seed).splits()
    train = _read_jsonl(cfg.path, cfg)
    if cfg.test_path:
        return train, _read_jsonl(cfg.test_path, cfg)
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

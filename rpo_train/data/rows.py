"""Training data: rows ``{"id", "question", "answer"}`` (and what a task's reward needs) from a bundled task, local
files through 🤗 datasets (``rpo_train.data.files``) or reasoning-gym (``rpo_train.data.gym``); prompts as token ids
(the tokenizer's chat template when it has one)."""

from __future__ import annotations

from ..config import DataConfig
from ..runtime.errors import UsageError
from ..task import TASKS, make_task


def load_rows(cfg: DataConfig) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows)."""
    if cfg.task in TASKS:
        return make_task(cfg).splits()
    if cfg.task == "hf":
        from .files import file_rows

        return file_rows(cfg)
    from .gym import gym_rows

    return gym_rows(cfg)


def encode_prompt(tokenizer, question: str | list[dict]) -> list[int]:
    """Token ids of the prompt: the chat template when the tokenizer has one (``question`` may then be chat messages),
    else BOS + the question's tokens."""
    if getattr(tokenizer, "chat_template", None):
        messages = question if isinstance(question, list) else [{"role": "user", "content": question}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return [int(t) for t in (ids["input_ids"] if hasattr(ids, "keys") else ids)]
    if isinstance(question, list):
        raise UsageError("a prompt is chat messages (data.prompt_field) but the model's tokenizer has no chat template")
    ids = tokenizer.encode(question, add_special_tokens=False)
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + list(ids)

"""The per-question object of a run: ``Question``, built once at its start from a source's rows and the tokenizer.

Every part of the method reads a question through it: its prompt ids for the engines and the policy, its ``qid``
for the experience cache, the question itself for the reward (``rpo_train.rewards``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ..runtime.errors import UsageError
from .config import DataSection
from .rows import load_rows


def question_id(prompt_ids: list[int]) -> str:
    """Stable id of a question, the experience cache's key: sha1 of its prompt token ids (20 hex digits)."""
    return hashlib.sha1(json.dumps(list(map(int, prompt_ids))).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Question:
    """One question of a run.

    qid: ``question_id(prompt_ids)``, its key in the experience cache. id: the source's id (a bundled task's
    ``rec-19-4-7``, a file's ``data.id_field`` or ``<file>-<row>``, reasoning-gym's ``<dataset>-train-3``).
    prompt: the question as text (reasoning-gym's with ``data.prompt_template`` applied) or chat messages
    (a list of {"role", "content"}). answer: the reference answer the rewards check. prompt_ids: list[int], the
    prompt's token ids (the tokenizer's chat template, else BOS + text); not to be changed. entry: reasoning-gym's
    own record of the question (question, answer, metadata), which ``reward: task`` scores against; else None.
    """

    qid: str
    id: str
    prompt: str | list[dict]
    answer: str
    prompt_ids: list[int]
    entry: dict | None = None


def encode_prompt(tokenizer, prompt: str | list[dict]) -> list[int]:
    """Token ids of a prompt: the chat template when the tokenizer has one (``prompt`` may then be chat messages),
    else BOS + the prompt's tokens."""
    if getattr(tokenizer, "chat_template", None):
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return [int(t) for t in (ids["input_ids"] if hasattr(ids, "keys") else ids)]
    if isinstance(prompt, list):
        raise UsageError("a prompt is chat messages (data.prompt_field) but the model's tokenizer has no chat template")
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + list(ids)


def to_question(row: dict, tokenizer) -> Question:
    """The ``Question`` of a source row ``{"id", "question", "answer"[, "entry"]}``."""
    ids = encode_prompt(tokenizer, row["question"])
    return Question(question_id(ids), row["id"], row["question"], row["answer"], ids, row.get("entry"))


def load_questions(cfg: DataSection, tokenizer) -> tuple[list[Question], list[Question]]:
    """(train questions, held-out questions) of the data section ``cfg``, their prompts encoded by ``tokenizer``."""
    train, test = load_rows(cfg)
    return [to_question(r, tokenizer) for r in train], [to_question(r, tokenizer) for r in test]

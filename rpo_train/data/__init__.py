"""Training data sources: rows ``{"id", "question", "answer"}`` from a bundled task (``rpo_train.task``), local files
through 🤗 datasets (``files``) or reasoning-gym (``gym``), and prompts as token ids (``rows``: ``load_rows`` picks the
source named by ``data.task``, ``encode_prompt`` applies the tokenizer's chat template when it has one)."""

from .rows import encode_prompt, load_rows

__all__ = ["encode_prompt", "load_rows"]

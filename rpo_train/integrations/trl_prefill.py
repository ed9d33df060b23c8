"""Prefix-KV reuse for TRL's transformers generation: rows that share their whole input are prefilled once.

Under RPO the G rows of a group ask for suffixes of the same prompt + prefix, and TRL's transformers path
(``GRPOTrainer._generate_single_turn`` -> ``model.generate``) prefills each row separately, G times the same
context. Inside ``shared_prefill(model)``, ``model.generate`` first runs ONE forward over the distinct rows
(identical input ids and attention mask), copies each one's KV cache to its rows (``Cache.reorder_cache`` with the
row -> distinct-row index), and lets ``generate`` decode from there: it feeds only the last input token, at the
positions it would have given it (``cumsum(attention_mask) - 1``, as the prefill here). Everything else is TRL's and
transformers' own (sampling settings, stopping, EOS handling), so only the prefill's cost changes. A call that shares
nothing, already has a cache, or uses a non-dynamic cache implementation goes to ``generate`` unchanged.
"""

from __future__ import annotations

import contextlib

import torch


def _shared_generate(model, real):
    def generate(*args, input_ids=None, attention_mask=None, **kwargs):
        config = kwargs.get("generation_config") or getattr(model, "generation_config", None)
        plain = (args or input_ids is None or attention_mask is None or input_ids.shape[1] < 2
                 or kwargs.get("past_key_values") is not None or kwargs.get("cache") is not None
                 or getattr(config, "cache_implementation", None) is not None
                 or getattr(config, "use_cache", True) is False)
        if not plain:
            width = input_ids.shape[1]
            rows, inverse = torch.unique(torch.cat([input_ids, attention_mask.to(input_ids.dtype)], 1), dim=0,
                                         return_inverse=True)
            plain = rows.shape[0] == input_ids.shape[0]  # nothing shared
        if plain:
            return real(*args, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        from transformers import DynamicCache

        ids, mask = rows[:, :width], rows[:, width:]
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                  cache=cache, use_cache=True, logits_to_keep=1)
        cache.reorder_cache(inverse.to(input_ids.device))
        return real(input_ids=input_ids, attention_mask=attention_mask, cache=cache, **kwargs)

    return generate


@contextlib.contextmanager
def shared_prefill(model):
    """Within the block, ``model.generate`` prefills each distinct input row once (see the module)."""
    had = "generate" in vars(model)
    before = vars(model).get("generate")
    model.generate = _shared_generate(model, model.generate)
    try:
        yield model
    finally:
        if had:
            model.generate = before
        else:
            del model.generate

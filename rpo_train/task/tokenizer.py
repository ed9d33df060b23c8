"""Character tokenizers for the bundled tasks, built locally (no download) as transformers tokenizers, and the random
tiny models that go with them."""

from __future__ import annotations

from pathlib import Path

SPECIALS = ("<pad>", "<bos>", "<eos>")
ADDITION_CHARS = "0123456789+=c;\n Answer:"


def build_tokenizer(chars: str = ADDITION_CHARS):
    """``PreTrainedTokenizerFast`` with one token per character of ``chars`` (default: the addition task's); ids 0,
    1, 2 = pad, bos, eos."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


def make_tiny_checkpoint(path: str | Path, *, hidden: int = 64, layers: int = 2, arch: str = "llama",
                         max_positions: int = 160, seed: int = 0, tokenizer=None) -> Path:
    """Save a random tiny Llama/Qwen2/Mistral model (``arch``) with ``tokenizer`` (default: the addition task's) at
    ``path`` (HF format, safetensors); its vocabulary has at least 32 entries."""
    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    tok = tokenizer if tokenizer is not None else build_tokenizer()
    kw = dict(vocab_size=max(32, len(tok)), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
              tie_word_embeddings=True)
    torch.manual_seed(seed)
    kinds = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
             "mistral": (MistralConfig, MistralForCausalLM)}
    if arch not in kinds:
        raise ValueError(f"argument 'arch' must be one of {sorted(kinds)}, got {arch!r}")
    config_cls, model_cls = kinds[arch]
    model = model_cls(config_cls(**kw, **({"sliding_window": None} if arch == "mistral" else {})))
    path = Path(path)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path

"""Load an HF-format model folder (config.json + safetensors) of a supported architecture, offline: the model a run
starts from (what HF calls a checkpoint; a run's own training state is ``rpo_train.runtime.checkpointing``'s).

Only local directories are accepted: nothing is fetched from a hub. Errors name the missing file or the unsupported
setting.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..runtime.errors import MissingPathError, UsageError, one_line
from ..runtime.finite import check_finite

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def model_dir(path) -> Path:
    """The checkpoint directory, checked: it exists and holds config.json and safetensors weights."""
    p = Path(path)
    if not p.exists():
        raise MissingPathError(f"checkpoint path {str(p)!r} does not exist")
    if not p.is_dir():
        raise MissingPathError(f"checkpoint path {str(p)!r} is not a directory (expected an HF-format folder)")
    if not (p / "config.json").is_file():
        raise MissingPathError(f"checkpoint {str(p)!r} has no config.json")
    if not any((p / name).is_file() for name in WEIGHT_FILES):
        raise MissingPathError(f"checkpoint {str(p)!r} has no weights: expected one of {list(WEIGHT_FILES)} "
                               f"(safetensors; convert .bin/.gguf checkpoints first)")
    return p


def load_config(path, *, native: bool = True):
    """``transformers.AutoConfig`` of a local checkpoint, checked to be an architecture the native engine runs
    (``native``; vLLM and transformers run many more)."""
    from transformers import AutoConfig

    p = model_dir(path)
    try:
        config = AutoConfig.from_pretrained(p, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse the user's config.json names the file
        raise UsageError(f"checkpoint {str(p)!r}: config.json cannot be read ({one_line(exc)})") from exc
    if native:
        check_supported(config, str(p))
    return config


def check_supported(config, where: str = "the checkpoint") -> None:
    """Raise ``UsageError`` unless ``config`` is a decoder of a family the native engine implements."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UsageError(f"{where}: unsupported architecture model_type={model_type!r} "
                         f"(architectures={getattr(config, 'architectures', None)}); the native engine supports "
                         f"{list(SUPPORTED_MODEL_TYPES)} (rpo-train runs other causal LMs with rollout.engine hf "
                         "or vllm)")
    layer_types = getattr(config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types) or getattr(config, "use_sliding_window", False):
        raise UsageError(f"{where}: sliding-window attention layers are not supported by the native engine")


def load_model(path, *, dtype: torch.dtype = torch.float32, device="cpu"):
    """The ``AutoModelForCausalLM`` of a local checkpoint in eval mode, on ``device`` in ``dtype``."""
    from transformers import AutoModelForCausalLM

    config = load_config(path)
    model = AutoModelForCausalLM.from_pretrained(model_dir(path), config=config, dtype=dtype,
                                                 local_files_only=True)
    check_finite_weights(model, path)
    return model.to(device).eval()


def weight_file(path, name: str) -> Path:
    """The safetensors file of a model folder that holds the tensor ``name`` (by the index of a sharded folder)."""
    p = Path(path)
    index = p / "model.safetensors.index.json"
    if index.is_file():
        try:
            return p / json.loads(index.read_text())["weight_map"][name]
        except (OSError, ValueError, KeyError, TypeError):
            return index
    return p / "model.safetensors"


def check_finite_weights(model: torch.nn.Module, path) -> None:
    """Refuse (``rpo_train.runtime.finite.NonFiniteError``) a model loaded from the folder ``path`` whose weights
    hold NaN or inf, naming the tensor and its file: a diverged run's weights would fail deep in the sampler."""
    check_finite(model.state_dict().items(), lambda name: f"model {weight_file(path, name)}",
                 "a diverged run leaves such weights: start from an earlier checkpoint or the original model")


def eos_token_ids(path, config) -> tuple[int, ...]:
    """End-of-sequence ids from generation_config.json (if present) and config.json, deduplicated."""
    ids: list[int] = []
    sources = [config]
    p = Path(path)
    if (p / "generation_config.json").is_file():
        from transformers import GenerationConfig

        sources.insert(0, GenerationConfig.from_pretrained(p, local_files_only=True))
    for src in sources:
        value = getattr(src, "eos_token_id", None)
        for t in ([] if value is None else [value] if isinstance(value, int) else list(value)):
            if t not in ids:
                ids.append(int(t))
    return tuple(ids)


def load_tokenizer(path):
    """The checkpoint's tokenizer if it ships one, else None (the engines work on token ids)."""
    p = Path(path)
    if not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(p, local_files_only=True)

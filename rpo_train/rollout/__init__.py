"""Rollout engines: one interface, three backends, one ``SamplingParams`` (``params``) that every ``generate`` takes.

- ``NativeEngine``: HF-format Llama/Qwen2/Qwen3 checkpoints on ``rpo_kernels`` (prefix KV once per group, batched
  suffix decoding, paged KV with a budget, weight-versioned prefix KV).
- ``HFEngine``: transformers ``generate``, the baseline.
- ``VLLMEngine``: vLLM's public API (imported only when used; ``import rpo_train`` never imports vllm).
"""

from .config import NativeEngineConfig
from .hf import HFEngine
from .interface import Completion, GroupRequest, RolloutEngine, normalize_requests
from .native import NativeEngine
from .params import SamplingParams
from .vllm import VLLMEngine

__all__ = ["Completion", "GroupRequest", "HFEngine", "NativeEngine", "NativeEngineConfig", "RolloutEngine",
           "SamplingParams", "VLLMEngine", "normalize_requests"]

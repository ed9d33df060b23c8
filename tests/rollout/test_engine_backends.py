"""The native engine's parity on every lane decode backend that runs here: the reference always, Triton through its
CPU interpreter (TRITON_INTERPRET=1, set by tests/conftest.py) or on a GPU, and the CUDA kernel where the extension
is built. Greedy tokens equal HF ``generate``'s and log-probs the plain forward's (1e-4), with and without prefixes."""

from __future__ import annotations

import pytest
import torch

from rpo_kernels._dispatch import backend_status
from rpo_train.rollout import NativeEngine, NativeEngineConfig, SamplingParams
from tests.helpers.rollout_models import hf_greedy, hf_model, hf_next_token_logits, make_checkpoint

PROMPTS = [[1, 2, 3], [17, 42, 99, 100, 7, 8, 250, 3, 11, 12, 13]]
PREFIXES = [[201, 202, 203, 204, 205], []]
BUDGETS = [6, 5]


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    # head dim 64 (hidden 256, 4 heads): a size the CUDA kernel takes
    path = make_checkpoint(tmp_path_factory.mktemp("qwen2_backends"), "qwen2", seed=2, hidden_size=256)
    return path, hf_model(path)


@pytest.mark.parametrize("backend", ["reference", "triton",
                                     pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.cuda_ext])])
def test_engine_parity_on_each_decode_backend(qwen2, backend):
    device = torch.device("cuda" if backend == "cuda" else "cpu")
    ok, why = backend_status(backend, device)
    if not ok:
        pytest.skip(f"lane decode backend {backend!r} cannot run here: {why}")
    path, model = qwen2
    dtype = torch.bfloat16 if backend == "cuda" else torch.float32  # the CUDA kernel takes 16-bit KV
    engine = NativeEngine.from_pretrained(path, device=device, dtype=dtype,
                                          config=NativeEngineConfig(attention_backend=backend))
    greedy = engine.generate(PROMPTS, prefixes=PREFIXES, n=2, params=SamplingParams(BUDGETS, temperature=0))
    sampled = engine.generate(PROMPTS, prefixes=PREFIXES, n=2, params=SamplingParams(BUDGETS, seed=5))
    for i in range(len(PROMPTS)):
        context = PROMPTS[i] + PREFIXES[i]
        if backend != "cuda":  # bf16 greedy may differ from fp32 HF on near ties
            assert all(c.token_ids == hf_greedy(model, context, BUDGETS[i]) for c in greedy[i])
        for c in sampled[i]:
            logits = hf_next_token_logits(model, context, c.token_ids)
            ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(c.token_ids)[:, None])[:, 0]
            tol = 1e-4 if dtype == torch.float32 else 5e-2
            torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=tol, rtol=0)

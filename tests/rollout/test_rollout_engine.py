"""Native rollout engine: parity with HF generate, logprobs, seeding, top-k/top-p, KV budget, weight versions."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rpo_train.rollout import Completion, HFEngine, NativeEngine, NativeEngineConfig, RolloutEngine, SamplingParams
from tests.helpers.rollout_models import EOS, hf_greedy, hf_model, hf_next_token_logits, make_checkpoint

PROMPTS = [[1, 2, 3], [17, 42, 99, 100, 7, 8, 250, 3, 11, 12, 13], [60, 61, 62, 63, 64, 65, 66]]
PREFIXES = [[201, 202, 203, 204, 205], [], [9, 10, 11, 12, 13, 14, 15, 16, 17]]
BUDGETS = [12, 9, 15]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster (and immune to a busy machine); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tokens(groups):
    return [[(c.token_ids, c.finish_reason) for c in g] for g in groups]


def _logprobs(groups):
    return torch.tensor([x for g in groups for c in g for x in c.logprobs])


@pytest.fixture(scope="module", params=["qwen2", "llama", "qwen3"])
def ckpt(request, tmp_path_factory):
    path = make_checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    return path, hf_model(path), NativeEngine.from_pretrained(path)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    path = make_checkpoint(tmp_path_factory.mktemp("qwen2_single"), "qwen2", seed=1)
    return path, hf_model(path)


@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize("with_prefix", [False, True])
def test_greedy_matches_hf_generate(ckpt, n, with_prefix):
    path, model, engine = ckpt
    prefixes = PREFIXES if with_prefix else None
    groups = engine.generate(PROMPTS, prefixes=prefixes, n=n, params=SamplingParams(BUDGETS, temperature=0))
    assert len(groups) == len(PROMPTS)
    for i, group in enumerate(groups):
        context = PROMPTS[i] + (PREFIXES[i] if with_prefix else [])
        ref = hf_greedy(model, context, BUDGETS[i])
        assert len(group) == n
        for c in group:
            assert isinstance(c, Completion)
            assert c.token_ids == ref, f"prompt {i}: native {c.token_ids} != HF generate {ref}"
            assert c.finish_reason == ("stop" if ref[-1] == EOS else "length")
            assert all(isinstance(x, float) for x in c.logprobs)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 20, 1.0), (1.3, 0, 0.9)])
def test_logprobs_match_plain_forward(ckpt, temperature, top_k, top_p):
    _, model, engine = ckpt
    params = SamplingParams(BUDGETS, temperature=temperature, top_k=top_k, top_p=top_p, seed=3)
    groups = engine.generate(PROMPTS, prefixes=PREFIXES, n=2, params=params)
    for i, group in enumerate(groups):
        for c in group:
            logits = hf_next_token_logits(model, PROMPTS[i] + PREFIXES[i], c.token_ids) / temperature
            if top_k:
                logits = logits.masked_fill(logits < torch.topk(logits, top_k).values[:, -1:], float("-inf"))
            if top_p < 1:
                probs, order = torch.softmax(logits, -1).sort(-1, descending=True)
                drop = (probs.cumsum(-1) - probs) >= top_p
                drop[:, 0] = False
                logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
            ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(c.token_ids)[:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=0)


def test_greedy_logprobs_are_the_models(ckpt):
    _, model, engine = ckpt
    c = engine.generate([PROMPTS[1]], n=1, params=SamplingParams(8, temperature=0))[0][0]
    logits = hf_next_token_logits(model, PROMPTS[1], c.token_ids)
    ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(c.token_ids)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=0)


def test_seeded_sampling_is_reproducible_and_schedule_free(qwen2):
    path, _ = qwen2
    engine = NativeEngine.from_pretrained(path)
    params = SamplingParams(BUDGETS, temperature=1.0, seed=123)
    kwargs = dict(prefixes=PREFIXES, n=4, params=params)
    a = engine.generate(PROMPTS, **kwargs)
    b = engine.generate(PROMPTS, **kwargs)
    assert a == b
    c = engine.generate(PROMPTS, **{**kwargs, "params": dataclasses.replace(params, seed=124)})
    assert _tokens(a) != _tokens(c)
    # A KV budget so small that groups wait and samples run a few at a time: the same tokens for the same seed
    # (logprobs equal up to float rounding of the different batch shapes).
    tight = NativeEngine.from_pretrained(path, config=NativeEngineConfig(kv_budget_tokens=48, max_num_seqs=3))
    d = tight.generate(PROMPTS, **kwargs)
    assert _tokens(d) == _tokens(a)
    torch.testing.assert_close(_logprobs(d), _logprobs(a), atol=1e-5, rtol=0)
    stats = tight.kv.stats()
    assert stats.sequences == 0 and stats.shape.suffix_lanes < 4 * len(PROMPTS)  # samples did wait for lanes
    assert stats.shape.tokens() <= 48


def test_per_prompt_seeds_make_samples_independent_of_the_other_prompts(qwen2):
    """seed=[s_0, s_1, ...]: a prompt's samples are the same alone or beside others (data-parallel ranks rely on it)."""
    path, _ = qwen2
    engine = NativeEngine.from_pretrained(path)
    together = engine.generate(PROMPTS, prefixes=PREFIXES, n=3,
                               params=SamplingParams(BUDGETS, temperature=1.0, seed=[11, 22, 33]))
    for i in (2, 0):
        alone = engine.generate([PROMPTS[i]], prefixes=[PREFIXES[i]], n=3,
                                params=SamplingParams([BUDGETS[i]], temperature=1.0, seed=[[11, 22, 33][i]]))
        assert _tokens(alone) == _tokens([together[i]])
    shifted = engine.generate(PROMPTS, prefixes=PREFIXES, n=3,
                              params=SamplingParams(BUDGETS, temperature=1.0, seed=[11, 23, 33]))
    assert _tokens(shifted)[1] != _tokens(together)[1] and _tokens(shifted)[0] == _tokens(together)[0]
    with pytest.raises(ValueError, match="one seed per prompt"):
        engine.generate(PROMPTS, n=3, params=SamplingParams(4, temperature=1.0, seed=[1, 2]))


def test_top_k_and_top_p_never_emit_excluded_tokens(qwen2):
    path, model = qwen2
    engine = NativeEngine.from_pretrained(path)
    for top_k, top_p in [(3, 1.0), (0, 0.3)]:
        groups = engine.generate(PROMPTS[:2], n=6,
                                 params=SamplingParams(10, temperature=1.5, top_k=top_k, top_p=top_p, seed=7))
        for i, group in enumerate(groups):
            for c in group:
                probs = torch.softmax(hf_next_token_logits(model, PROMPTS[i], c.token_ids) / 1.5, -1)
                for t, (tok, row) in enumerate(zip(c.token_ids, probs)):
                    if top_k:
                        allowed = set(torch.topk(row, top_k).indices.tolist())
                    else:
                        p, order = row.sort(descending=True)
                        keep = int(((p.cumsum(0) - p) < top_p).sum())
                        allowed = set(order[:keep].tolist())
                    assert tok in allowed, f"top_k={top_k} top_p={top_p}: step {t} emitted excluded token {tok}"


def test_prefix_is_reprefilled_after_weight_change(qwen2, tmp_path):
    path, _ = qwen2
    engine = NativeEngine.from_pretrained(path)
    prompt, prefix = PROMPTS[1], PREFIXES[0]
    greedy = SamplingParams(6, temperature=0)
    first = engine.generate([prompt], prefixes=[prefix], n=2, params=greedy)
    prefilled = engine.stats["prefill_tokens"]
    assert prefilled == len(prompt) + len(prefix)
    assert engine.generate([prompt], prefixes=[prefix], n=2, params=greedy) == first
    assert engine.stats["prefill_tokens"] == prefilled and engine.stats["prefix_hits"] == 1  # same weights: reused

    new_model = make_checkpoint(tmp_path / "other", "qwen2", seed=5)
    new_weights = hf_model(new_model).state_dict()
    version = engine.weight_version
    engine.load_state_dict(new_weights)
    assert engine.weight_version == version + 1
    assert engine.kv.stats().prefixes == 0
    after = engine.generate([prompt], prefixes=[prefix], n=2, params=greedy)
    assert engine.stats["prefill_tokens"] == 2 * prefilled  # prefilled again under the new weights
    ref = hf_greedy(hf_model(new_model), prompt + prefix, 6)
    assert [c.token_ids for c in after[0]] == [ref, ref]


def test_stop_tokens_budgets_and_kv_freed(qwen2):
    path, model = qwen2
    engine = NativeEngine.from_pretrained(path)
    ref = hf_greedy(model, PROMPTS[2], 10, eos=None)
    stop = ref[4]
    groups = engine.generate([PROMPTS[2], PROMPTS[0]], n=3,
                             params=SamplingParams([10, 0], temperature=0, stop_token_ids=[stop]))
    cut = ref[:ref.index(stop) + 1]
    assert all(c.token_ids == cut and c.finish_reason == "stop" for c in groups[0])
    assert groups[1] == [Completion([], [], "length")] * 3
    stats = engine.kv.stats()
    assert stats.sequences == 0
    assert stats.prefixes == 1 and stats.prefix_lanes_used == 1  # only the reusable prefix stays


def test_group_larger_than_kv_budget_is_an_error(qwen2):
    path, _ = qwen2
    engine = NativeEngine.from_pretrained(path, config=NativeEngineConfig(kv_budget_tokens=16))
    with pytest.raises(ValueError, match="kv_budget_tokens"):
        engine.generate([list(range(1, 20))], params=SamplingParams(10))


def test_hf_engine_same_interface(qwen2):
    path, _ = qwen2
    native, hf = NativeEngine.from_pretrained(path), HFEngine.from_pretrained(path)
    assert isinstance(native, RolloutEngine) and isinstance(hf, RolloutEngine)
    kwargs = dict(prefixes=PREFIXES, n=2, params=SamplingParams(BUDGETS, temperature=0))
    a, b = native.generate(PROMPTS, **kwargs), hf.generate(PROMPTS, **kwargs)
    for ga, gb in zip(a, b):
        for ca, cb in zip(ga, gb):
            assert ca.token_ids == cb.token_ids and ca.finish_reason == cb.finish_reason
            torch.testing.assert_close(torch.tensor(ca.logprobs), torch.tensor(cb.logprobs), atol=1e-4, rtol=0)
    params = SamplingParams(5, temperature=0.8, top_k=5, seed=1)
    sampled = hf.generate(PROMPTS, n=3, params=params)
    assert sampled == hf.generate(PROMPTS, n=3, params=params)
    assert all(len(c.token_ids) == len(c.logprobs) <= 5 for g in sampled for c in g)

"""Bad input to the rollout engines: clear errors that name the problem."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from rpo_train.rollout import HFEngine, NativeEngine, NativeEngineConfig, SamplingParams
from tests.helpers.rollout_models import VOCAB, make_checkpoint


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("qwen2_inputs"), "qwen2")


@pytest.fixture(scope="module")
def engines(path):
    return NativeEngine.from_pretrained(path), HFEngine.from_pretrained(path)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(prompts=[[]]), ValueError, r"prompts\[0\] is empty"),
    (dict(prompts=[[1, 2], []]), ValueError, r"prompts\[1\] is empty"),
    (dict(prompts=[[1, VOCAB]]), ValueError, r"prompts\[0\]\[1\] = 300 is outside the vocabulary \[0, 300\)"),
    (dict(prompts=[[-1]]), ValueError, r"outside the vocabulary"),
    (dict(prompts=[[1]], prefixes=[[2, 400]]), ValueError, r"prefixes\[0\]\[1\] = 400 is outside"),
    (dict(prompts=[[1]], params=SamplingParams(4, stop_token_ids=[999])), ValueError,
     r"SamplingParams.stop_token_ids\[0\] = 999 is outside"),
    (dict(prompts=[[1, 2.5]]), TypeError, r"prompts\[0\]\[1\] must be an int"),
    (dict(prompts="hello"), TypeError, r"'prompts' must be a list"),
    (dict(prompts=["hello"]), TypeError, r"prompts\[0\] must be a list of token ids"),
    (dict(prompts=[[1]], n=0), ValueError, r"'n' must be an int >= 1"),
    (dict(prompts=[[1], [2]], params=SamplingParams([3])), ValueError,
     r"SamplingParams.max_new_tokens must be an int or one per prompt \(2\), got 1 values"),
    (dict(prompts=[[1]], params={"max_new_tokens": 4}), TypeError, r"'params' must be a .*SamplingParams, got dict"),
    (dict(prompts=[[1], [2]], prefixes=[[3]]), ValueError, r"'prefixes' must have one entry per prompt"),
    (dict(prompts=[[1] * 100], prefixes=[[2] * 20], params=SamplingParams(9)), ValueError,
     r"prompt \(100\) \+ prefix \(20\) \+ max_new_tokens \(9\) = 129 tokens exceeds the model's max length 128"),
])
@pytest.mark.parametrize("which", ["native", "hf"])
def test_bad_generate_arguments(engines, which, kwargs, error, match):
    engine = engines[0] if which == "native" else engines[1]
    kwargs = {"params": SamplingParams(4), **kwargs}
    prompts = kwargs.pop("prompts")
    with pytest.raises(error, match=match):
        engine.generate(prompts, **kwargs)


def test_edge_cases_that_are_valid(engines):
    native, _ = engines
    assert native.generate([], n=2, params=SamplingParams()) == []
    with pytest.raises(ValueError, match="exceeds the model's max length 128"):
        native.generate([[1]], params=SamplingParams())  # the default budget of 256 new tokens
    out = native.generate([[1] * 100], prefixes=[[2] * 20], params=SamplingParams(8, temperature=0))  # exactly 128
    assert len(out[0][0].token_ids) <= 8


def test_missing_files(tmp_path, path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        NativeEngine.from_pretrained(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        NativeEngine.from_pretrained(empty)
    (empty / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="has no weights"):
        NativeEngine.from_pretrained(empty)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        NativeEngine.from_pretrained(path / "config.json")


def test_unsupported_architecture(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported architecture model_type='gpt2'"):
        NativeEngine.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unsupported architecture"):
        HFEngine.from_pretrained(tmp_path)


def test_sliding_window_is_rejected(tmp_path, path):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(use_sliding_window=True, sliding_window=16, max_window_layers=0, layer_types=None)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="sliding-window"):
        NativeEngine.from_pretrained(tmp_path)


@pytest.mark.parametrize("kwargs,match", [
    (dict(kv_budget_tokens=0), "kv_budget_tokens must be a positive int"),
    (dict(max_num_seqs=2.0), "max_num_seqs must be a positive int"),
    (dict(attention_backend="fast"), "attention_backend must be"),
    (dict(reuse_prefix_kv="yes"), "reuse_prefix_kv must be a bool"),
])
def test_bad_engine_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NativeEngineConfig(**kwargs)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(max_new_tokens=-1), ValueError, r"^SamplingParams.max_new_tokens must be an int >= 0 or a list"),
    (dict(max_new_tokens=2.5), ValueError, r"^SamplingParams.max_new_tokens must be an int >= 0"),
    (dict(max_new_tokens=True), ValueError, r"^SamplingParams.max_new_tokens must be an int >= 0"),
    (dict(max_new_tokens=[3, -1]), ValueError, r"^SamplingParams.max_new_tokens\[1\] must be an int >= 0, got -1"),
    (dict(temperature=-0.5), ValueError, r"^SamplingParams.temperature must be a finite number >= 0"),
    (dict(temperature=float("inf")), ValueError, r"^SamplingParams.temperature must be a finite number"),
    (dict(temperature="hot"), ValueError, r"^SamplingParams.temperature must be a finite number"),
    (dict(top_p=0.0), ValueError, r"^SamplingParams.top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), ValueError, r"^SamplingParams.top_p must be in \(0, 1\]"),
    (dict(top_k=-2), ValueError, r"^SamplingParams.top_k must be an int >= 0 \(0 = off\), got -2"),
    (dict(top_k=1.5), ValueError, r"^SamplingParams.top_k must be an int >= 0"),
    (dict(stop_token_ids="2"), TypeError, r"^SamplingParams.stop_token_ids must be a list of token ids, got str"),
    (dict(stop_token_ids=[2, 1.5]), TypeError, r"^SamplingParams.stop_token_ids\[1\] must be an int token id"),
    (dict(stop_token_ids=[-1]), ValueError, r"^SamplingParams.stop_token_ids must be token ids >= 0"),
    (dict(seed="1"), ValueError, r"^SamplingParams.seed must be an int, a list of ints \(one per prompt\) or None"),
    (dict(seed=1.0), ValueError, r"^SamplingParams.seed must be an int"),
    (dict(seed=[1, "2"]), ValueError, r"^SamplingParams.seed as a list must hold ints \(one per prompt\), got '2'"),
])
def test_bad_sampling_params_name_the_field(kwargs, error, match):
    with pytest.raises(error, match=match):
        SamplingParams(**kwargs)


def test_sampling_params_values():
    params = SamplingParams([3, 0], temperature=0, stop_token_ids=torch.tensor([5, 7]), seed=[1, 2])
    assert params.greedy and not SamplingParams().greedy
    assert params.max_new_tokens == (3, 0) and params.stop_token_ids == (5, 7) and params.seed == (1, 2)
    assert all(type(t) is int for t in params.stop_token_ids)
    assert hash(params) == hash(SamplingParams((3, 0), 0, 1.0, 0, [5, 7], (1, 2)))  # frozen, lists held as tuples
    assert params.budgets(2) == [3, 0] and SamplingParams(4).budgets(3) == [4, 4, 4]
    assert params.seed_streams(2) == [(1, 0), (2, 0)] and SamplingParams(seed=9).seed_streams(2) == [(9, 0), (9, 1)]
    with pytest.raises(ValueError, match=r"SamplingParams.seed as a list needs one seed per prompt \(3\), got 2"):
        params.seed_streams(3)
    torch.manual_seed(0)
    drawn = SamplingParams().seed_streams(2)
    torch.manual_seed(0)
    assert SamplingParams().seed_streams(2) == drawn  # seed None: a call seed from torch's global RNG


def test_run_config_builds_the_sampling_params():
    from rpo_train.config import RolloutConfig

    section = RolloutConfig(temperature=0.9, top_p=0.8, top_k=5)
    assert section.sampling_params([4, 6], seed=[1, 2], stop_token_ids=[3]) == SamplingParams(
        (4, 6), temperature=0.9, top_p=0.8, top_k=5, stop_token_ids=(3,), seed=(1, 2))


def test_bad_state_dict(path):
    native = NativeEngine.from_pretrained(path)
    native.generate([[1, 2, 3]], params=SamplingParams(2))
    version = native.weight_version
    with pytest.raises(RuntimeError, match="Missing key"):
        native.load_state_dict({"model.embed_tokens.weight": torch.zeros(VOCAB, 64)})
    assert native.weight_version == version + 1  # partly loaded: the old prefix KV must not survive either
    assert native.kv.stats().prefixes == 0


def test_import_does_not_pull_vllm():
    code = ("import sys, rpo_train, rpo_train.rollout; "
            "bad = [m for m in ('vllm', 'transformers') if m in sys.modules]; print(bad); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_inverse_cdf_sampling_draws_from_p():
    from rpo_train.rollout.sampling import NoiseStream, sample

    p = torch.tensor([0.5, 0.0, 0.2, 0.25, 0.05])
    n = 20000
    logprobs = p.log().expand(n, -1)
    tokens = sample(logprobs, [NoiseStream(7, 0, i) for i in range(n)])
    counts = torch.bincount(tokens, minlength=5).double()
    assert counts[1] == 0  # p = 0 is never drawn
    expected = p.double() * n
    keep = expected > 0
    chi2 = (((counts - expected)[keep]) ** 2 / expected[keep]).sum().item()
    assert chi2 < 16.3  # chi-square, 3 degrees of freedom, p = 0.001
    again = sample(logprobs[:50], [NoiseStream(7, 0, i) for i in range(50)])
    assert torch.equal(again, tokens[:50])  # a stream depends on its seed only

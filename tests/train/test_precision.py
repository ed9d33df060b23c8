"""A run's precision (``rpo_train.model.precision``): what ``dtype`` resolves to on each machine, and bf16 on a CPU
within the accuracy rule against fp64 for the engine's log-probs and the training forward (prefix-once, under
autocast)."""

from __future__ import annotations

import copy

import pytest
import torch

from rpo_train.model import precision
from rpo_train.model.policy import build_batch, sequence_logprobs
from rpo_train.model.precision import resolve_precision
from rpo_train.rollout import NativeEngine, SamplingParams
from tests.helpers.rollout_models import hf_model, hf_next_token_logits, make_checkpoint, ragged_samples
from tests.helpers.rules import assert_within_rule

F32, BF16 = torch.float32, torch.bfloat16


@pytest.mark.parametrize("fast", [True, False])
def test_dtype_resolves_by_device_and_cpu(monkeypatch, fast):
    """(master, engine, autocast): auto on a CPU follows its bf16 instructions; float32 on a CPU stays fp32; a GPU
    computes in bf16 beside fp32 master weights; rollout.dtype overrides the engine's copy only."""
    monkeypatch.setattr(precision, "cpu_bf16_fast", lambda: fast)

    def triple(device, dtype, rollout="auto"):
        p = resolve_precision(device, dtype, rollout)
        return p.master, p.engine, p.autocast

    assert triple("cpu", "auto") == ((F32, BF16, BF16) if fast else (F32, F32, None))
    assert triple("cpu", "float32") == (F32, F32, None)
    assert triple("cuda", "auto") == triple("cuda:1", "float32") == (F32, BF16, BF16)
    assert triple("cpu", "bfloat16") == triple("cuda", "bfloat16") == (BF16, BF16, None)
    assert triple("cpu", "float32", "bfloat16") == (F32, BF16, None)
    header = resolve_precision("cpu", "auto").header()
    assert header.startswith("float32 master weights") and ("AVX512" in header or "AVX2" in header or fast)
    assert ("no bf16 instructions" in header) == (not fast)


def test_cpu_name_names_the_capability():
    assert precision.cpu_name().split(" + ")[0] == torch.backends.cpu.get_cpu_capability()


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model(request, tmp_path_factory):
    return hf_model(make_checkpoint(tmp_path_factory.mktemp(request.param), request.param))


def test_bf16_engine_logprobs_within_the_rule(model):
    """The engine serving a bf16 copy (dtype auto on a CPU with bf16): its sampled tokens' log-probs vs fp64 are
    within 2x of a plain bf16 HF forward's error on the same tokens."""
    torch.manual_seed(0)
    engine = NativeEngine(copy.deepcopy(model).eval().to(BF16))
    prompts, prefixes = [[1, 2, 3, 4], [17, 42, 99, 100, 7, 8, 250]], [[201, 202, 203], []]
    groups = engine.generate(prompts, prefixes=prefixes, n=3, params=SamplingParams([10, 12], temperature=1.0, seed=5))
    exact, low = copy.deepcopy(model).double(), copy.deepcopy(model).to(BF16)
    got, want, plain = [], [], []
    for prompt, prefix, group in zip(prompts, prefixes, groups):
        for c in group:
            ids = torch.tensor(c.token_ids)[:, None]
            got.append(torch.tensor(c.logprobs, dtype=torch.float64))
            for m, out in ((exact, want), (low, plain)):
                logits = hf_next_token_logits(m, prompt + prefix, c.token_ids).double()
                out.append(torch.log_softmax(logits, -1).gather(1, ids)[:, 0])
    assert_within_rule(torch.cat(got), torch.cat(want), torch.cat(plain), atol=1e-3, name="engine log-probs")


def test_bf16_autocast_prefix_once_forward_within_the_rule(model):
    """The training forward under CPU bf16 autocast with fp32 weights: prefix-once log-probs vs the fp32 forward
    (the fused log-prob kernels take no fp64; fp32's error is ~1e-6 against bf16's ~1e-2) within 2x of the plain
    forward's error under the same autocast."""
    samples = ragged_samples(6)
    exact = sequence_logprobs(model, build_batch(samples, 0, "full"))
    with torch.autocast("cpu", dtype=BF16):
        plain = sequence_logprobs(model, build_batch(samples, 0, "full"))
        once = sequence_logprobs(model, build_batch(samples, 0, "full", "prefix_once"))
    mask = build_batch(samples, 0, "full").loss_mask
    assert_within_rule(once[mask].float(), exact[mask], plain[mask].float(), atol=1e-3, name="prefix-once log-probs")


def test_a_run_with_dtype_auto_trains_under_autocast_and_samples_from_a_bf16_copy(monkeypatch, tmp_path):
    """On a CPU with bf16 instructions (patched in, so every machine checks it): the engine serves a bf16 copy of the
    fp32 master weights and the loss, old and reference log-probs run under bf16 autocast."""
    import dataclasses

    from rpo_train import trainer as trainer_module
    from rpo_train.task.tokenizer import make_tiny_checkpoint
    from tests.helpers.train_configs import config, ones_reward

    monkeypatch.setattr(precision, "cpu_bf16_fast", lambda: True)
    seen = []
    for name in ("forward_loss", "sequence_logprobs"):
        real = getattr(trainer_module, name)
        monkeypatch.setattr(trainer_module, name, lambda *a, _real=real, _name=name, **kw:
                            seen.append((_name, torch.is_autocast_enabled("cpu"))) or _real(*a, **kw))
    checkpoint = make_tiny_checkpoint(tmp_path / "tiny", hidden=32, max_positions=96)
    cfg = dataclasses.replace(config(checkpoint, tmp_path / "run", steps=1), dtype="auto")
    trainer = trainer_module.Trainer(cfg, reward_fn=ones_reward)
    assert trainer.precision.autocast == BF16 and trainer.precision.why.startswith("dtype auto: this CPU has")
    trainer.train()
    assert {name for name, _ in seen} == {"forward_loss", "sequence_logprobs"} and all(on for _, on in seen)
    assert all(p.dtype == F32 for p in trainer.model.parameters())
    assert all(p.dtype == BF16 for p in trainer.engine.model.hf.parameters())


@pytest.mark.parametrize("gib", [0.25, 3])
def test_the_rollout_section_sets_the_native_engine_kv_budget(tmp_path, gib):
    """``rollout.kv_budget_gib`` reaches the native engine (the GPU recipes raise it: lanes pad to the longest)."""
    from dataclasses import replace

    from rpo_train.run_inputs import build_engine
    from tests.helpers.train_configs import config

    ckpt = make_checkpoint(tmp_path / "m", "qwen2")
    cfg = config(ckpt, tmp_path / "run")
    cfg = replace(cfg, rollout=replace(cfg.rollout, kv_budget_gib=gib))
    engine = build_engine(cfg, hf_model(ckpt), torch.float32)
    assert engine.config.kv_budget_bytes == round(gib * 2**30)

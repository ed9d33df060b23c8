"""End-to-end training smokes of the GPU recipes' code paths, run by the GPU suite (scripts/gpu_suite.sh).

- The embedded task on a GPU: recipe ``tiny-cpu`` (the recurrence task) with ``device=cuda dtype=bfloat16``, a few
  RPO-GRPO steps with the native engine, which must decode on a GPU kernel reading the KV lanes (CUDA when the
  extension is built, else Triton), and the plain policy forward, whose fused lm_head + loss must run in Triton.
- The paper's GPU recipe (``r1-distill-qwen-1.5b-gpu``) on a random model of the R1-Distill-Qwen-1.5B shape (28
  layers, vocab 151936): 2 RPO-GRPO steps with its settings (fp32 master weights with the forward under bf16
  autocast and a bf16 engine copy, the prefix-once forward with its fused lm_head log-probs, KL to a frozen
  reference, math-verify reward), only the lengths and counts made small. A random model
  earns no reward, so the update is driven by the KL term alone: the code path, not learning, is what is shown.

Each runs on a GPU (marked ``gpu``) and, at rehearsal size on the CPU, in every test run: the same recipe overrides
and the same checks, so the GPU visit does not find a broken smoke.
"""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

import rpo_kernels
from rpo_train.config import load_recipe
from rpo_train.task.recurrence import RecurrenceTask
from rpo_train.task.tokenizer import build_tokenizer, make_tiny_checkpoint
from tests.helpers.train_configs import ones_reward

OPS = ("rpo_kernels.ops.shared_prefix_attention", "rpo_kernels.ops.lane_decode_attention",
       "rpo_kernels.ops.policy_loss", "rpo_kernels.ops.token_logprobs")


@pytest.fixture
def chosen_backends(monkeypatch):
    """{op: set of backends the dispatcher picked} over the test."""
    import importlib

    from rpo_kernels import _dispatch

    seen: dict[str, set[str]] = {}

    def recording(op, device, backend, implemented):
        choice = _dispatch.resolve_backend(op, device, backend, implemented)
        seen.setdefault(op, set()).add(choice)
        return choice

    for name in OPS:
        monkeypatch.setattr(importlib.import_module(name), "resolve_backend", recording)
    return seen


def check_backends(seen: dict, device: str, loss_op: str) -> None:
    """On a CPU everything runs the reference. On a GPU nothing falls back to it: the engine's decode attention
    reads its KV lanes with the CUDA kernel when the extension is built (else Triton), the training forward's kernels
    are Triton's."""
    assert {"lane_decode_attention", loss_op} <= set(seen), seen
    if device == "cpu":
        assert all(s == {"reference"} for s in seen.values()), seen
        return
    assert all("reference" not in s for s in seen.values()), f"a kernel fell back to the reference on the GPU: {seen}"
    decode = "cuda" if rpo_kernels.backends(device)["cuda"]["available"] else "triton"
    assert seen["lane_decode_attention"] == {decode}, seen
    assert seen[loss_op] == {"triton"}, seen


def check_run(out, steps: int) -> list[dict]:
    """Every step logged once with generated tokens; the steps that trained have a finite loss."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(steps + 1))
    trained = [r for r in rows[1:] if "train/loss" in r]
    assert trained, "no step trained"
    assert all(math.isfinite(r["train/loss"]) and math.isfinite(r["train/grad_norm"]) for r in trained)
    assert all(r["rollout/generated_tokens"] > 0 for r in rows[1:])
    return rows


def report(name: str, rows: list[dict], seconds: float, device: str) -> None:
    step_s = [r["time/step_s"] for r in rows[1:]]
    peak = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device == "cuda" else ""
    print(f"{name}: {len(step_s)} steps, {sum(step_s) / len(step_s):.2f} s/step, {seconds:.1f} s in all{peak}")


def embedded_task_smoke(tmp_path, device: str, seen: dict) -> None:
    from rpo_train.trainer import Trainer

    # head dim 64: the CUDA decode kernel's size (it takes 64 and 128)
    ckpt = make_tiny_checkpoint(tmp_path / "tiny", hidden=256, layers=2, max_positions=320,
                                tokenizer=RecurrenceTask().tokenizer())
    dtype = "bfloat16" if device == "cuda" else "float32"
    cfg = load_recipe("tiny-cpu", [f"model={ckpt}", f"out_dir={tmp_path / 'run'}", f"device={device}",
                                   f"dtype={dtype}", "steps=3", "batch_questions=8", "eval_every=3",
                                   "save_every=3", "eval_max_new_tokens=40", "data.n_train=24", "data.n_test=8",
                                   "optim.policy_forward=plain"])  # the fused lm_head + loss kernel
    start = time.perf_counter()
    summary = Trainer(cfg, reward_fn=ones_reward).train()
    assert summary["steps"] == 3
    rows = check_run(tmp_path / "run", 3)
    check_backends(seen, device, "fused_linear_policy_loss")
    report("embedded task", rows, time.perf_counter() - start, device)


def gpu_recipe_smoke(tmp_path, device: str, arch: str, seen: dict) -> None:
    from benchmarks.models import save_random_checkpoint
    from rpo_train.trainer import Trainer

    tok = build_tokenizer()
    ckpt = save_random_checkpoint(
        tmp_path / arch, arch, tokenizer=tok, device=device,
        dtype=torch.bfloat16 if device == "cuda" else torch.float32,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    overrides = [f"model={ckpt}", f"out_dir={tmp_path / 'run'}", "steps=2", "batch_questions=4", "eval_every=2",
                 "save_every=2", "eval_max_new_tokens=16", "data.task=addition", "data.n_train=8", "data.n_test=4",
                 "rollout.max_response_len=128", "truncation.max_cut=48", "optim.micro_batch=6"]
    if device == "cpu":
        overrides += ["device=cpu", "dtype=float32"]
    cfg = load_recipe("r1-distill-qwen-1.5b-gpu", overrides)
    assert (cfg.reward, cfg.objective.beta, cfg.rollout.engine, cfg.rollout.dtype) == ("math", 0.04, "native", "auto")
    start = time.perf_counter()
    trainer = Trainer(cfg)
    assert trainer.policy_forward == "prefix_once" and trainer.ref_model is not None
    summary = trainer.train()
    assert summary["steps"] == 2
    rows = check_run(tmp_path / "run", 2)
    check_backends(seen, device, "token_logprobs")
    report(f"GPU recipe on random {arch}", rows, time.perf_counter() - start, device)


@pytest.mark.gpu
def test_embedded_task_trains_on_the_gpu_kernels(tmp_path, chosen_backends):
    embedded_task_smoke(tmp_path, "cuda", chosen_backends)


@pytest.mark.gpu
def test_gpu_recipe_runs_on_a_1p5b_shaped_model(tmp_path, chosen_backends):
    gpu_recipe_smoke(tmp_path, "cuda", "qwen2-1.5b", chosen_backends)


def test_embedded_task_smoke_rehearsed_on_cpu(tmp_path, chosen_backends):
    embedded_task_smoke(tmp_path, "cpu", chosen_backends)


def test_gpu_recipe_smoke_rehearsed_on_cpu(tmp_path, chosen_backends):
    pytest.importorskip("math_verify", reason="the GPU recipes' reward needs math-verify (a dependency of rpo)")
    gpu_recipe_smoke(tmp_path, "cpu", "tiny", chosen_backends)

"""The training loop end to end on a random tiny model: the four arms, recipes and overrides, kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rpo_train.cache import CacheConfig
from rpo_train.config import RolloutConfig, RunConfig, load_recipe
from rpo_train.objectives import ObjectiveConfig
from rpo_train.rewards import RewardResult
from rpo_train.task.tokenizer import make_tiny_checkpoint
from tests.helpers.train_configs import config, ones_reward


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", hidden=32, max_positions=96)


@pytest.mark.parametrize("mode,algorithm", [("full", "grpo"), ("rpo", "grpo"), ("full", "dapo"), ("rpo", "dapo")])
def test_four_arms_train_and_checkpoint(checkpoint, tmp_path, mode, algorithm):
    from rpo_train.trainer import Trainer

    trainer = Trainer(config(checkpoint, tmp_path, mode, algorithm), reward_fn=ones_reward)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    summary = trainer.train()
    assert summary["steps"] == 3 and trainer.engine.weight_version >= 3
    changed = any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    trained = [r for r in rows[1:] if r.get("train/active_tokens")]
    assert changed == bool(trained)
    if mode == "rpo":
        assert len(trainer.cache) == 12 and summary["cache_init_s"] > 0
        assert all(r["rollout/suffix_len"] <= 8 for r in rows[1:])  # suffix budget m <= L
        assert max(e.step for e in trainer.cache.entries.values()) == 3
    else:
        assert summary["cache_init_s"] == 0.0
    assert (tmp_path / "checkpoints" / "latest.json").is_file() and (tmp_path / "plots.png").is_file()


def test_bad_config_names_the_problem(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="group_size"):
        RolloutConfig(group_size=1)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['stepz'\]"):
        load_recipe("tiny-cpu", ["stepz=3"])
    with pytest.raises(ValueError, match="bundled recipes"):
        load_recipe("no-such-recipe")
    with pytest.raises(ValueError, match="exceed the model's 96 positions"):
        from rpo_train.trainer import Trainer

        cfg = config(checkpoint, tmp_path)
        Trainer(RunConfig(**{**cfg.__dict__, "rollout": RolloutConfig(max_response_len=90)}))
    from rpo_train.config import RECIPES_DIR

    for recipe in sorted(RECIPES_DIR.glob("*.yaml")):  # every bundled recipe validates
        assert load_recipe(recipe.stem).steps >= 1
    cfg = load_recipe("tiny-cpu", ["steps=7", "objective.loss_tokens=suffix", "rollout.group_size=4", "optim.lr=1e-6"])
    assert (cfg.steps, cfg.objective.loss_tokens, cfg.rollout.group_size, cfg.optim.lr) == (7, "suffix", 4, 1e-6)


def test_rpo_without_a_kl_anchor_is_noted():
    assert load_recipe("tiny-cpu").notes() == []  # RPO-GRPO, beta 0.04
    assert load_recipe("tiny-cpu", ["objective.algorithm=dapo", "objective.mode=full"]).notes() == []
    assert load_recipe("tiny-cpu", ["objective.algorithm=dapo"]).notes() == []  # the guard resolved (guard.py)
    (note,) = load_recipe("tiny-cpu", ["objective.algorithm=dapo", "cache.refresh_drift=0"]).notes()  # turned off
    assert note.startswith("objective.beta = 0 with objective.mode rpo and no cache refresh")
    assert "cache.refresh_stat=flips cache.refresh_drift=2" in note
    assert load_recipe("tiny-cpu", ["objective.algorithm=dapo", "cache.refresh_stat=flips",
                                    "cache.refresh_drift=2"]).notes() == []
    assert load_recipe("tiny-cpu", ["objective.algorithm=dapo", "cache.refresh_drift=0.1"]).notes() == []
    assert load_recipe("tiny-cpu", ["objective.algorithm=dapo", "objective.beta=0.04"]).notes() == []


SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from tests.helpers.train_configs import {make}, ones_reward
from rpo_train.trainer import Trainer
Trainer({make}({ckpt!r}, {out!r}, steps={steps}, save_every={save_every}), reward_fn=ones_reward).train()
"""


def run_script(checkpoint, out, steps=4, save_every=1, make="config"):
    code = SCRIPT.format(root=str(Path(__file__).resolve().parents[2]), ckpt=str(checkpoint), out=str(out),
                         steps=steps, save_every=save_every, make=make)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def logged_steps(out) -> list[int]:
    path = Path(out) / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass
    return steps


def kill_when(proc, ready, timeout=300.0):
    """SIGKILL ``proc`` as soon as ``ready()`` holds (or it exits on its own)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def final_weights(out):
    from safetensors.torch import load_file

    latest = json.loads((Path(out) / "checkpoints" / "latest.json").read_text())
    return latest["step"], load_file(str(Path(out) / "checkpoints" / latest["dir"] / "model.safetensors"))


@pytest.mark.parametrize("make", ["config", "guarded", "lazy"])
def test_kill_9_and_resume_matches_uninterrupted_run(checkpoint, tmp_path, make):
    """Weights and cache (with the guard's writer log-probs, reuses and per-question L) equal after a kill -9."""
    from rpo_train.cache import ExperienceCache

    whole = run_script(checkpoint, tmp_path / "whole", make=make)
    assert whole.wait(timeout=600) == 0, whole.stderr.read()
    out = tmp_path / "killed"
    proc = run_script(checkpoint, out, make=make)
    pointer = out / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (pointer.is_file() and json.loads(pointer.read_text())["step"] >= 2):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step_at_kill = json.loads(pointer.read_text())["step"]
    assert 2 <= step_at_kill
    again = run_script(checkpoint, out, make=make)
    assert again.wait(timeout=600) == 0, again.stderr.read()
    step_a, weights_a = final_weights(tmp_path / "whole")
    step_b, weights_b = final_weights(out)
    assert step_a == step_b == 4
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    caches = [ExperienceCache.load(o / "checkpoints" / json.loads((o / "checkpoints" / "latest.json").read_text())
                                   ["dir"] / "cache.safetensors") for o in (tmp_path / "whole", out)]
    assert caches[0].digest() == caches[1].digest()
    summaries = [json.loads((o / "summary.json").read_text()) for o in (tmp_path / "whole", out)]
    assert summaries[0]["refreshes"] == summaries[1]["refreshes"]
    if make == "guarded":
        assert summaries[0]["refreshes"] > 0 and max(e.reuses for e in caches[0].entries.values()) <= 2


def test_logs_after_repeated_kill_9_equal_an_uninterrupted_run(checkpoint, tmp_path):
    """Killed twice after rows past the last checkpoint were logged, once with a torn last line left behind: each
    step is logged exactly once and the rows (all but wall times) and the plots equal an uninterrupted run's."""
    whole = run_script(checkpoint, tmp_path / "whole", steps=6, save_every=2)
    assert whole.wait(timeout=600) == 0, whole.stderr.read()
    out = tmp_path / "killed"
    kill_when(run_script(checkpoint, out, steps=6, save_every=2), lambda: max(logged_steps(out), default=-1) >= 3)
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "reward/me')  # a write cut off by the kill
    kill_when(run_script(checkpoint, out, steps=6, save_every=2), lambda: max(logged_steps(out), default=-1) >= 5)
    again = run_script(checkpoint, out, steps=6, save_every=2)
    assert again.wait(timeout=600) == 0, again.stderr.read()

    def rows(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")} for line in lines]

    assert [r["step"] for r in rows(out)] == list(range(7))
    assert rows(out) == rows(tmp_path / "whole")
    assert (out / "plots.png").read_bytes() == (tmp_path / "whole" / "plots.png").read_bytes()


def test_metrics_are_cut_back_to_the_checkpoint(tmp_path):
    from rpo_train.runtime.metrics import MetricsLogger

    logger = MetricsLogger(tmp_path)
    for step in range(5):
        logger.log(step, {"x": float(step)})
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "x"')
    assert logger.resume_at(2) == 3
    assert [r["step"] for r in logger.rows()] == [0, 1, 2]
    assert (tmp_path / "metrics.jsonl").read_text().endswith("\n")
    assert MetricsLogger(tmp_path).resume_at(-1) == 3 and logger.rows() == []


def test_tensorboard_events_after_the_checkpoint_are_purged(tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard is optional (pip install tensorboard); JSONL is checked "
                                              "without it")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rpo_train.runtime.metrics import MetricsLogger

    first = MetricsLogger(tmp_path)
    first.resume_at(-1)
    for step in range(5):
        first.log(step, {"x": float(step)})
    first.tb.close()
    second = MetricsLogger(tmp_path)  # resumed from the checkpoint of step 2: steps 3 and 4 come again
    second.resume_at(2)
    for step in range(3, 5):
        second.log(step, {"x": 10.0 * step})
    second.tb.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("x")] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_cache_init_resamples_responses_without_an_answer(checkpoint, tmp_path):
    from rpo_train.trainer import Trainer

    trainer = Trainer(config(checkpoint, tmp_path, cache=CacheConfig(resample_no_answer=2)), reward_fn=ones_reward)
    calls = []
    real = trainer.engine.generate
    trainer.engine.generate = lambda prompts, **kw: calls.append(len(prompts)) or real(prompts, **kw)
    trainer.init_cache()
    # a random model never writes "Answer: ...": every question is sampled once and retried twice
    assert calls == [12, 12, 12] and len(trainer.cache) == 12


def test_dynamic_sampling_drops_zero_variance_groups_and_refills(checkpoint, tmp_path):
    from rpo_train.trainer import Trainer

    def first_operand(question) -> int:  # its id is add-<a>-<b>
        return int(question.id.split("-")[1])

    def half_constant(question, text):  # questions with an even first operand always score 1: zero variance
        return RewardResult(1.0, True) if first_operand(question) % 2 == 0 else ones_reward(question, text)

    import dataclasses

    cfg = dataclasses.replace(config(checkpoint, tmp_path),  # no reward shaping: constant rewards stay constant
                              objective=ObjectiveConfig.preset("dapo", mode="full", length_aware=False))
    trainer = Trainer(cfg, reward_fn=half_constant)
    kept, rolled, stats = trainer._collect()
    assert all(not g.zero_variance for g in kept) and len(kept) <= 4
    constant = [g for g in rolled if first_operand(g.question) % 2 == 0]
    assert all(g.zero_variance for g in constant)
    if constant:  # dropped groups were replaced by fresh questions
        assert len(rolled) > 4 and stats["rollout/groups"] == len(rolled)
    assert stats["rollout/zero_variance_share"] == sum(g.zero_variance for g in rolled) / len(rolled)


def test_prompts_use_the_chat_template_when_there_is_one():
    from rpo_train.data import encode_prompt
    from rpo_train.task.tokenizer import build_tokenizer

    tok = build_tokenizer()
    plain = encode_prompt(tok, "12+34=")
    assert plain == [tok.bos_token_id] + tok.encode("12+34=", add_special_tokens=False)
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}={% endif %}")
    templated = encode_prompt(tok, "12+34")
    assert templated == tok.encode("12+34=", add_special_tokens=False)
    assert all(isinstance(t, int) for t in templated)


def test_engine_keeps_a_16_bit_copy_of_fp32_master_weights(checkpoint, tmp_path):
    """rollout.dtype: the engine samples with a bf16 copy while AdamW updates fp32 weights, and every step's push
    refreshes that copy; "auto" picks it for fp32 weights on a GPU only."""
    import dataclasses

    from rpo_train.model.precision import resolve_precision
    from rpo_train.trainer import Trainer

    cfg = config(checkpoint, tmp_path, steps=2)
    auto = {(device, dtype): resolve_precision(device, dtype, cfg.rollout.dtype).engine
            for device in ("cpu", "cuda") for dtype in ("float32", "bfloat16")}
    assert auto == {("cpu", "float32"): torch.float32, ("cpu", "bfloat16"): torch.bfloat16,
                    ("cuda", "float32"): torch.bfloat16, ("cuda", "bfloat16"): torch.bfloat16}
    with pytest.raises(ValueError, match="rollout.dtype"):
        RolloutConfig(dtype="int8")
    cfg = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, dtype="bfloat16"))
    trainer = Trainer(cfg, reward_fn=ones_reward)
    trainer.train()
    master = trainer.model.state_dict()
    served = trainer.engine.model.hf.state_dict()
    assert all(w.dtype == torch.float32 for w in master.values())
    assert all(w.dtype == torch.bfloat16 for w in served.values())
    for name, w in master.items():
        assert torch.equal(served[name], w.to(torch.bfloat16)), name


def test_mu_above_one_takes_old_logprobs_from_the_policy_before_the_update(checkpoint, tmp_path, monkeypatch):
    """mu = 3: the first pass over the batch sees ratio 1 exactly (old log-probs are the policy's own, recomputed
    before the update, also on the prefix tokens the sampler never scored); the later passes see the moved policy."""
    import dataclasses

    from rpo_train import trainer as trainer_module
    from rpo_train.trainer import Trainer

    cfg = config(checkpoint, tmp_path, steps=1)
    cfg = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, mu=3, beta=0.0))
    calls = []
    real = trainer_module.forward_loss

    def recording(model, batch, adv, objective, **kw):
        loss, metrics = real(model, batch, adv, objective, **kw)
        calls.append((kw["old_logprobs"] is not None, float(metrics["ratio_mean"]), float(metrics["clip_frac"])))
        return loss, metrics

    monkeypatch.setattr(trainer_module, "forward_loss", recording)
    trainer = Trainer(cfg, reward_fn=ones_reward)
    trainer.init_cache()
    trainer.train_step()
    assert calls and len(calls) % 3 == 0 and all(has_old for has_old, _, _ in calls)
    first = calls[:len(calls) // 3]
    assert all(ratio == pytest.approx(1.0, abs=1e-6) and clip == 0.0 for _, ratio, clip in first)
    assert any(abs(ratio - 1.0) > 1e-6 for _, ratio, _ in calls[len(calls) // 3:])

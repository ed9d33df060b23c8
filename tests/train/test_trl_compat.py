"""RPOTrainer under the settings TRL users train with: the rows of docs/trl.md's compatibility table.

Each test trains a tiny random model for a few steps with one setting changed from the defaults and checks a property
of RPO that the setting could break: LoRA (with the drift guard on), gradient checkpointing, generation rounds under
``num_iterations`` / ``steps_per_generation`` / gradient accumulation, a batch that is not a multiple of G, every loss
type, beta > 0, ``mask_truncated_completions``, several weighted rewards, chat prompts. Evaluation, resume and two
processes are in test_trl_integration.py, vLLM in test_trl_vllm.py.
"""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = pytest.mark.trl


@pytest.fixture(scope="module")
def worker():
    from tests.helpers import trl_worker

    return trl_worker


@pytest.fixture(scope="module")
def model_dir(worker, tmp_path_factory):
    return worker.tiny_model(tmp_path_factory.mktemp("compat") / "model")


def logged(trainer, name: str) -> list[float]:
    return [h[name] for h in trainer.state.log_history if name in h]


def test_lora_trains_with_the_drift_guard_on(worker, model_dir, tmp_path):
    """The guard's probe and writer forwards go through the PEFT model: LoRA weights move, the base does not, and
    every cached token has the finite log-prob of the policy that wrote it."""
    LoraConfig = pytest.importorskip("peft", reason="LoRA needs peft (in the dev extra)").LoraConfig
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer, _ = worker.build(tmp_path, model_dir, 3, peft_config=lora, rpo_refresh_drift=4.6, learning_rate=1e-2,
                              rpo_cache_init="eager")
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert moved and all("lora_" in n for n in moved)
    entries = list(trainer.rpo_cache.entries.values())
    assert len(entries) == worker.QUESTIONS
    assert all(e.logprobs and all(math.isfinite(x) and x <= 0 for x in e.logprobs) for e in entries)
    assert logged(trainer, "rpo/drift_drop_mean")


def test_gradient_checkpointing_with_the_guard(worker, model_dir, tmp_path):
    trainer, _ = worker.build(tmp_path, model_dir, 2, gradient_checkpointing=True, rpo_refresh_drift=4.6,
                              rpo_cache_init="eager")
    trainer.train()
    assert logged(trainer, "rpo/drift_drop_mean") and len(logged(trainer, "rpo/round")) == 2


@pytest.mark.parametrize("settings,rounds", [
    ({"num_iterations": 2}, 2),
    ({"steps_per_generation": 2, "per_device_train_batch_size": 4}, 2),
    ({"gradient_accumulation_steps": 2, "per_device_train_batch_size": 4}, 4),
])
def test_rounds_count_generations_not_optimizer_steps(worker, model_dir, tmp_path, settings, rounds):
    """4 optimizer steps: plans, refresh cadence and logs follow generation rounds. A full share drawn every 2nd
    round refreshes exactly the even rounds."""
    trainer, _ = worker.build(tmp_path, model_dir, 4, rpo_full_share=0.5, rpo_refresh_every=2,
                              rpo_cache_init="eager", **settings)
    log = worker.traced(trainer)
    trainer.train()
    training = [e for e in log if "keys" in e]
    assert trainer.rpo_state.rounds == rounds == len(training)
    assert [e["round"] for e in training] == list(range(1, rounds + 1))
    for e in training:
        refreshed = any(r == "share" for r in e["refresh"])
        assert refreshed == (e["round"] % 2 == 0)


def test_a_batch_that_is_not_a_multiple_of_g(worker, model_dir, tmp_path):
    """6 rows per device with G = 4: groups span micro-batches; each group still shares one prefix."""
    trainer, _ = worker.build(tmp_path, model_dir, 2, per_device_train_batch_size=6, steps_per_generation=2,
                              rpo_cache_init="eager")
    log = worker.traced(trainer)
    trainer.train()
    for e in (e for e in log if "keys" in e):
        assert len(e["keys"]) == 12
        for lo in range(0, 12, worker.GROUP):
            assert len({tuple(p) for p in e["prefixes"][lo:lo + worker.GROUP]}) == 1


@pytest.mark.parametrize("loss_type,beta", [("grpo", 0.04), ("dapo", 0.0), ("dr_grpo", 0.0), ("bnpo", 0.04)])
def test_loss_types_and_beta(worker, model_dir, tmp_path, loss_type, beta):
    trainer, _ = worker.build(tmp_path, model_dir, 1, loss_type=loss_type, beta=beta)
    trainer.train()
    losses = logged(trainer, "train_loss")
    assert losses and all(math.isfinite(x) for x in losses)
    assert bool(logged(trainer, "kl")) == (beta > 0)


def test_mask_truncated_completions_keeps_its_grpo_meaning(worker, model_dir, tmp_path):
    """With the default suffix budget a completion is truncated only when it reaches max_completion_length."""
    trainer, _ = worker.build(tmp_path, model_dir, 2, mask_truncated_completions=True, rpo_cache_init="eager")
    log = worker.traced(trainer)
    trainer.train()
    eos = trainer.processing_class.eos_token_id
    for e in (e for e in log if "keys" in e):
        for completion in e["completions"]:
            assert completion[-1] == eos or len(completion) == 40
    assert logged(trainer, "completions/clipped_ratio")


def test_two_weighted_rewards_reach_the_logs_untouched(worker, model_dir, tmp_path):
    """[recorder, brevity] with weights 2 and 0.5; the correctness reward is named. The logged per-function means
    are the means of what each function returned; the total is their weighted sum (no shaping by default)."""
    returned: list[list[float]] = []

    def brevity(prompts, completions, **kwargs):
        out = [1.0 / (1 + len(c)) for c in completions]
        returned.append(out)
        return out

    trainer, recorder = worker.build(tmp_path, model_dir, 2, extra_rewards=[brevity], reward_weights=[2.0, 0.5],
                                     rpo_correct_reward="recorder")
    values = []
    spy = recorder.__call__

    class Spy:
        __name__ = "recorder"

        def __call__(self, *a, **k):
            out = spy(*a, **k)
            if len(out) == 2 * worker.GROUP:  # a round's scoring (the lazy init scores its own few responses)
                values.append(out)
            return out

    trainer.reward_funcs[0] = Spy()
    trainer.train()
    rec, brev = logged(trainer, "rewards/recorder/mean"), logged(trainer, "rewards/brevity/mean")
    assert rec == pytest.approx([sum(v) / len(v) for v in values], abs=1e-6)
    assert brev == pytest.approx([sum(v) / len(v) for v in returned], abs=1e-6)
    total = [2.0 * sum(a) / len(a) + 0.5 * sum(b) / len(b) for a, b in zip(values, returned)]
    assert logged(trainer, "reward") == pytest.approx(total, abs=1e-5)
    assert not logged(trainer, "rewards/rpo_length/mean")


def test_length_shaping_when_asked_is_a_component_of_its_own(worker, model_dir, tmp_path):
    trainer, _ = worker.build(tmp_path, model_dir, 2, rpo_length_aware=True, rpo_length_alpha=0.5,
                              rpo_cache_init="eager")
    trainer.train()
    shaping = logged(trainer, "rewards/rpo_length/mean")
    assert len(shaping) == 2 and all(x <= 0 for x in shaping)
    rec = logged(trainer, "rewards/recorder/mean")
    assert logged(trainer, "reward") == pytest.approx([a + b for a, b in zip(rec, shaping)], abs=1e-5)


def test_chat_prompts(worker, model_dir, tmp_path):
    """Conversational rows: the prompt goes through the tokenizer's chat template; rewards get messages."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = worker.dataset(tok)
    chat = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"][len(tok.bos_token):]}],
                               "answer": r["answer"], "id": r["id"]} for r in rows])
    seen = []

    def has_one(prompts, completions, **kwargs):
        seen.append(completions)
        return [float("1" in c[0]["content"]) for c in completions]

    trainer, _ = worker.build(tmp_path, model_dir, 2, rows=chat, extra_rewards=[has_one],
                              rpo_correct_reward="has_one", rpo_cache_init="eager")
    trainer.processing_class.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    log = worker.traced(trainer)
    trainer.train()
    assert seen and all(c[0]["role"] == "assistant" for c in seen[-1])
    first = next(e for e in log if "keys" in e)
    assert all(p for p in first["prefixes"])  # the eager init ran through the chat template

"""A small RPOTrainer run on a tiny random model, for the TRL integration tests (run in-process or under torchrun).

``python trl_worker.py OUT STEPS [key=value ...]``: trains on the bundled recurrence task's questions with a random
2-layer model and writes ``OUT/rank{r}.json``: every training row's (key, prefix, completion) and the cache digest
after each generation, the prompt ids the evaluation sampled from, and whether the shared-prefix forward served.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from rpo_train.data.config import BundledData
from rpo_train.integrations.trl import RPOConfig, RPOTrainer
from rpo_train.rewards import exact_answer_reward
from rpo_train.task import make_task
from rpo_train.task.recurrence import CHARS
from rpo_train.task.tokenizer import build_tokenizer, make_tiny_checkpoint

QUESTIONS = 6
GROUP = 4


def tiny_model(path: Path) -> Path:
    """A random tiny Llama with the recurrence task's character tokenizer (built once per path)."""
    if not (path / "config.json").is_file():
        make_tiny_checkpoint(path, hidden=32, layers=2, max_positions=160, tokenizer=build_tokenizer(CHARS))
    return path


def dataset(tok, n: int = QUESTIONS, data: BundledData | None = None) -> Dataset:
    """``n`` training questions of the recurrence task (short ones unless ``data`` says otherwise)."""
    data = data or BundledData(task="recurrence", terms=2, n_train=n, n_test=4, seed=7)
    train, _ = make_task(data).splits()
    train = train[:n]
    return Dataset.from_list([{"prompt": tok.bos_token + r["question"], "answer": r["answer"], "id": r["id"]}
                              for r in train])


class Recorder:
    """A reward function that records what it was shown (and rewards '1' anywhere in the response, so that
    groups are mixed under a random model)."""

    __name__ = "recorder"

    def __init__(self):
        self.seen: list[dict] = []

    def __call__(self, prompts, completions, completion_ids, answer, **kwargs):
        completions = [c[0]["content"] if isinstance(c, list) else c for c in completions]  # chat: the message
        self.seen.append({"completions": list(completions), "ids": [list(map(int, c)) for c in completion_ids],
                          "answer": list(answer), "columns": sorted(kwargs)})
        return [float("1" in c) + exact_answer_reward({"answer": a}, c).reward for c, a in zip(completions, answer)]


def build(out: Path, model_dir: Path, steps: int, rows: Dataset | None = None, extra_rewards: list | None = None,
          peft_config=None, **overrides) -> tuple[RPOTrainer, Recorder]:
    """An RPOTrainer on ``model_dir`` for ``steps`` optimizer steps; the ``Recorder`` is reward function 0,
    ``extra_rewards`` follow it."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    settings = dict(output_dir=str(out), per_device_train_batch_size=GROUP * 2, num_generations=GROUP,
                    max_completion_length=40, temperature=1.0, learning_rate=1e-3, max_steps=steps, logging_steps=1,
                    report_to="none", save_strategy="no", rpo_max_cut=12, use_cpu=True, seed=3, beta=0.0,
                    per_device_eval_batch_size=GROUP * 2, num_generations_eval=GROUP, bf16=False,
                    dataloader_num_workers=0, rpo_refresh_drift=0.0, rpo_correct_threshold=0.5)
    settings.update(overrides)
    recorder = Recorder()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = RPOTrainer(model=model, reward_funcs=[recorder, *(extra_rewards or [])], args=RPOConfig(**settings),
                         train_dataset=dataset(tok) if rows is None else rows, eval_dataset=dataset(tok, 4),
                         processing_class=tok, peft_config=peft_config)
    return trainer, recorder


def traced(trainer: RPOTrainer) -> list[dict]:
    """Record every training rollout's plans and completions, and the cache digest after each update."""
    log: list[dict] = []
    rollout, rewards = trainer._rpo_rollout, trainer._calculate_rewards

    def spy_rollout(prompts, _):
        out = rollout(prompts, trainer)
        if trainer.model.training:
            keys, plans = trainer._rpo_pending[:2]
            log.append({"step": trainer.state.global_step, "round": trainer.rpo_state.rounds, "keys": keys,
                        "prefixes": [p.prefix for p in plans], "cuts": [p.cut for p in plans],
                        "refresh": [p.refresh for p in plans], "completions": out["completion_ids"],
                        "env_mask": out.get("env_mask")})
        else:
            log.append({"eval_prompts": out["prompt_ids"], "completions": out["completion_ids"]})
        return out

    def spy_rewards(*args):
        result = rewards(*args)
        if trainer.model.training:
            log[-1]["digest"] = trainer.rpo_cache.digest()
        return result

    trainer.rollout_func = spy_rollout
    trainer._calculate_rewards = spy_rewards
    return log


def main() -> None:
    out, steps = Path(sys.argv[1]), int(sys.argv[2])
    overrides = dict(arg.split("=", 1) for arg in sys.argv[3:])
    trainer, _ = build(out, tiny_model(out / "model"), steps, **{k: json.loads(v) for k, v in overrides.items()})
    log = traced(trainer)
    trainer.train()
    rank = trainer.accelerator.process_index
    shared = [h["rpo/shared_forward"] for h in trainer.state.log_history if "rpo/shared_forward" in h]
    (out / f"rank{rank}.json").write_text(json.dumps({"log": log, "digest": trainer.rpo_cache.digest(),
                                                      "shared_state": trainer._shared_state, "shared": shared}))


if __name__ == "__main__":
    main()

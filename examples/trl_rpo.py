"""A TRL GRPO script with RPO switched on: the two names from ``rpo_train.integrations.trl`` are the whole change.

    pip install -e ".[trl]"
    python examples/trl_rpo.py                                  # bundled recurrence task and its warm tiny model
    python examples/trl_rpo.py --model checkpoints/smollm2-135m-instruct --steps 4
        # a real checkpoint on reasoning-gym's basic_arithmetic, chat-template prompts, math-verify reward
    python examples/trl_rpo.py --grpo                           # the same script on TRL's own GRPOTrainer

The bundled task trains from its warm-started tiny model (built on first use, about 2 minutes on 2 cores); any local
Hugging Face checkpoint with a chat template trains on conversational prompts ("prompt" as chat messages).
"""

from __future__ import annotations

import argparse

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from rpo_train.data import load_rows
from rpo_train.data.config import BundledData, GymData
from rpo_train.integrations.trl import RPOConfig, RPOTrainer
from rpo_train.rewards import exact_answer_reward, math_verify_reward


def text_of(completion) -> str:
    """A completion as text: TRL passes chat messages for conversational prompts."""
    return completion[-1]["content"] if isinstance(completion, list) else completion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin", help="a local HF checkpoint, or 'builtin' (the bundled task)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", default="runs/trl-rpo")
    parser.add_argument("--grpo", action="store_true", help="train with TRL's GRPOTrainer instead (the baseline)")
    args = parser.parse_args()

    if args.model == "builtin":
        from rpo_train.task.warmstart import ensure_warm_model

        data_cfg = BundledData(task="recurrence", n_train=400, n_test=200)
        model_path, max_len, cut, verify = ensure_warm_model("tiny-recurrence", data_cfg), 280, 30, exact_answer_reward
    else:
        data_cfg = GymData(name="basic_arithmetic", n_train=400, n_test=64,
                           options={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
                           prompt_template="{question}")
        model_path, max_len, cut, verify = args.model, 128, 100, math_verify_reward
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_rows, _ = load_rows(data_cfg)
    chat = bool(tokenizer.chat_template)
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["question"]}] if chat else tokenizer.bos_token + r["question"],
         "answer": r["answer"], "id": r["id"]} for r in train_rows])

    def correct(completions, answer, **_):
        return [verify({"answer": a}, text_of(c)).reward for c, a in zip(completions, answer)]

    common = dict(output_dir=args.out, per_device_train_batch_size=64, num_generations=8, max_steps=args.steps,
                  max_completion_length=max_len, temperature=0.7, learning_rate=2e-4 if args.model == "builtin" else
                  1e-5, lr_scheduler_type="constant", loss_type="grpo", beta=0.04, logging_steps=1, save_steps=20,
                  report_to="none", use_cpu=True)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    if args.grpo:
        from trl import GRPOConfig, GRPOTrainer

        trainer = GRPOTrainer(model=model, reward_funcs=[correct], args=GRPOConfig(**common), train_dataset=dataset,
                              processing_class=tokenizer)
    else:
        trainer = RPOTrainer(model=model, reward_funcs=[correct], train_dataset=dataset, processing_class=tokenizer,
                             args=RPOConfig(**common, rpo_max_cut=cut, rpo_key_column="id"))
    trainer.train()


if __name__ == "__main__":
    main()

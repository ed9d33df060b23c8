"""RPOTrainer on a real checkpoint with chat-template prompts: a few steps of TRL's GRPOTrainer and of RPOTrainer,
side by side in one invocation (one after the other, same threads), on reasoning-gym's basic_arithmetic (two
one-digit terms, all four operators) with a math-verify reward.

    python scripts/convert_smollm2.py --out checkpoints/smollm2-135m-instruct    # once, offline
    python -m benchmarks.bench_trl_real --model checkpoints/smollm2-135m-instruct --steps 4 --threads 2

Shows that RPO works there (prefixes cut from cached chat responses, rewards on the whole response) and what a step
costs when generation is a larger share of it than on the tiny model; not an accuracy comparison (too few steps).
``--arms grpo-shared`` adds plain GRPO with the shared-prompt forward (``SharedPrefixGRPOTrainer``), ``--few-shot K``
puts K solved questions before every prompt (a long prompt the group shares). Writes ``--out`` (default
``benchmarks/results/trl/real.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rpo_train.runtime.atomic import atomic_write
from rpo_train.runtime.errors import UsageError, report_usage_errors

from .harness import RESULTS_DIR, device_name, versions

ARMS = ("grpo", "rpo", "grpo-shared")


def few_shot_turns(rows: list[dict], k: int) -> list[dict]:
    """``k`` solved questions as earlier chat turns (user question, assistant answer): a long prompt the G rows of a
    group share."""
    turns = []
    for r in rows[:k]:
        turns += [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": str(r["answer"])}]
    return turns


def run(arm: str, model_path: str, steps: int, questions: int, out: Path, few_shot: int = 0,
        max_completion: int = 128) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rpo_train.data import load_rows
    from rpo_train.data.config import GymData
    from rpo_train.integrations.trl import GRPOTrainer, RPOConfig, RPOTrainer
    from rpo_train.rewards import math_verify_reward

    data_cfg = GymData(name="basic_arithmetic", n_train=questions, n_test=max(8, few_shot),
                       options={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1,
                                "operators": ["+", "-"], "allow_parentheses": False, "allow_negation": False},
                       prompt_template="{question}")  # the smollm2-135m-cpu recipe's task
    rows, shots = load_rows(data_cfg)
    tok = AutoTokenizer.from_pretrained(model_path)
    context = few_shot_turns(shots, few_shot)
    data = Dataset.from_list([{"prompt": context + [{"role": "user", "content": r["question"]}],
                               "answer": r["answer"], "id": r["id"]} for r in rows])
    seen: list[str] = []

    def correct(completions, answer, **_):
        texts = [c[-1]["content"] for c in completions]
        seen.extend(texts)
        return [math_verify_reward({"answer": a}, t).reward for t, a in zip(texts, answer)]

    args = dict(output_dir=str(out), per_device_train_batch_size=48, num_generations=6,
                max_completion_length=max_completion,
                temperature=0.7, learning_rate=1e-5, lr_scheduler_type="constant", loss_type="grpo", beta=0.04,
                max_steps=steps, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, seed=0,
                bf16=False, disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if arm == "rpo":  # RPOConfig's defaults: the drift guard on, L from the data, the shared-prefix forward
        trainer = RPOTrainer(model=model, reward_funcs=[correct], train_dataset=data, processing_class=tok,
                             args=RPOConfig(**args, rpo_key_column="id"))
    elif arm == "grpo-shared":  # plain GRPO, the group's prompt computed once in the training forward
        from rpo_train.integrations.trl_shared import SharedPrefixGRPOConfig, SharedPrefixGRPOTrainer

        trainer = SharedPrefixGRPOTrainer(model=model, reward_funcs=[correct], train_dataset=data,
                                          processing_class=tok, args=SharedPrefixGRPOConfig(**args))
    else:
        from trl import GRPOConfig

        trainer = GRPOTrainer(model=model, reward_funcs=[correct], args=GRPOConfig(**args), train_dataset=data,
                              processing_class=tok)
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    logs = [h for h in trainer.state.log_history if "step_time" in h]
    generated = [h.get("rpo/suffix_length", h["completions/mean_length"]) for h in logs]
    result = {"arm": arm, "steps": steps, "total_s": total, "step_s": [h["step_time"] for h in logs],
              "tokens_per_sample": sum(generated) / len(generated), "reward": [h["reward"] for h in logs],
              "response_len": [h["completions/mean_length"] for h in logs], "example_response": seen[-1][:300]}
    result["prompt_tokens"] = len(tok.apply_chat_template(data[0]["prompt"], add_generation_prompt=True,
                                                          tokenize=True, return_dict=False))
    if arm != "grpo":
        result.update(token_reuse=[h.get("rpo/token_reuse") for h in logs],
                      shared_forward=[h.get("rpo/shared_forward") for h in logs])
    if arm == "rpo":
        result.update(cache_init_s=trainer.rpo_state.init_s, init_tokens=trainer.rpo_state.init_tokens,
                      cut=[h["rpo/cut"] for h in logs], cache_size=len(trainer.rpo_cache))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a local HF checkpoint with a chat template")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--questions", type=int, default=32, help="training questions (the eager cache init's size)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--work", default="runs/bench_trl_real")
    parser.add_argument("--arms", nargs="*", default=["grpo", "rpo"], choices=ARMS)
    parser.add_argument("--few-shot", type=int, default=0, help="solved questions before each prompt (chat turns)")
    parser.add_argument("--max-completion", type=int, default=128, help="max_completion_length of every arm")
    parser.add_argument("--out", default=str(RESULTS_DIR / "trl" / "real.json"))
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    if args.child:
        result = run(args.child, args.model, args.steps, args.questions, work / args.child, args.few_shot,
                     args.max_completion)
        atomic_write(work / f"{args.child}.json", lambda tmp: Path(tmp).write_text(json.dumps(result)))
        return
    if not (Path(args.model) / "config.json").is_file():
        raise UsageError(f"--model {args.model}: no config.json there (convert SmolLM2 first: "
                         "scripts/convert_smollm2.py)")
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads)) if args.threads else dict(os.environ)
    results = {}
    for arm in args.arms:
        cmd = [sys.executable, "-m", "benchmarks.bench_trl_real", "--child", arm, "--model", args.model,
               "--steps", str(args.steps), "--questions", str(args.questions), "--work", str(work),
               "--few-shot", str(args.few_shot), "--max-completion", str(args.max_completion)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{arm} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        results[arm] = json.loads((work / f"{arm}.json").read_text())
        print(arm, {k: v for k, v in results[arm].items() if k != "example_response"}, flush=True)
    record = {"model": Path(args.model).name, "device": device_name("cpu"), "threads": args.threads,
              "few_shot": args.few_shot, "max_completion_length": args.max_completion,
              "version": versions(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
    print(f"written {out}")


if __name__ == "__main__":
    sys.exit(report_usage_errors("benchmarks.bench_trl_real", lambda: main() or 0))

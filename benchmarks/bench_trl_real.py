"""RPOTrainer on a real checkpoint with chat-template prompts: a few steps of TRL's GRPOTrainer and of RPOTrainer,
side by side in one invocation (one after the other, same threads), on reasoning-gym's basic_arithmetic (two
one-digit terms, all four operators) with a math-verify reward.

    python scripts/convert_smollm2.py --out checkpoints/smollm2-135m-instruct    # once, offline
    python -m benchmarks.bench_trl_real --model checkpoints/smollm2-135m-instruct --steps 4 --threads 2

Shows that RPO works there (prefixes cut from cached chat responses, rewards on the whole response) and what a step
costs when generation is a larger share of it than on the tiny model; not an accuracy comparison (too few steps).
Writes ``benchmarks/results/trl/real.json``.
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


def run(arm: str, model_path: str, steps: int, questions: int, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rpo_train.data import load_rows
    from rpo_train.data.config import GymData
    from rpo_train.integrations.trl import GRPOTrainer, RPOConfig, RPOTrainer
    from rpo_train.rewards import math_verify_reward

    data_cfg = GymData(name="basic_arithmetic", n_train=questions, n_test=8,
                       options={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
                       prompt_template="{question}")
    rows, _ = load_rows(data_cfg)
    tok = AutoTokenizer.from_pretrained(model_path)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["question"]}], "answer": r["answer"],
                               "id": r["id"]} for r in rows])
    seen: list[str] = []

    def correct(completions, answer, **_):
        texts = [c[-1]["content"] for c in completions]
        seen.extend(texts)
        return [math_verify_reward({"answer": a}, t).reward for t, a in zip(texts, answer)]

    args = dict(output_dir=str(out), per_device_train_batch_size=48, num_generations=6, max_completion_length=128,
                temperature=0.7, learning_rate=1e-5, lr_scheduler_type="constant", loss_type="grpo", beta=0.04,
                max_steps=steps, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, seed=0,
                bf16=False, disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if arm == "rpo":
        trainer = RPOTrainer(model=model, reward_funcs=[correct], train_dataset=data, processing_class=tok,
                             args=RPOConfig(**args, rpo_max_cut=100, rpo_full_share=0.05, rpo_refresh_drift=0.0,
                                             rpo_key_column="id"))
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
    parser.add_argument("--child", choices=["grpo", "rpo"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    if args.child:
        result = run(args.child, args.model, args.steps, args.questions, work / args.child)
        atomic_write(work / f"{args.child}.json", lambda tmp: Path(tmp).write_text(json.dumps(result)))
        return
    if not (Path(args.model) / "config.json").is_file():
        raise UsageError(f"--model {args.model}: no config.json there (convert SmolLM2 first: "
                         "scripts/convert_smollm2.py)")
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads)) if args.threads else dict(os.environ)
    results = {}
    for arm in ("grpo", "rpo"):
        cmd = [sys.executable, "-m", "benchmarks.bench_trl_real", "--child", arm, "--model", args.model,
               "--steps", str(args.steps), "--questions", str(args.questions), "--work", str(work)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{arm} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        results[arm] = json.loads((work / f"{arm}.json").read_text())
        print(arm, {k: v for k, v in results[arm].items() if k != "example_response"}, flush=True)
    record = {"model": Path(args.model).name, "device": device_name("cpu"), "threads": args.threads,
              "version": versions(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **results}
    out = RESULTS_DIR / "trl" / "real.json"
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
    print(f"written {out}")


if __name__ == "__main__":
    sys.exit(report_usage_errors("benchmarks.bench_trl_real", lambda: main() or 0))

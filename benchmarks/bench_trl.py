"""RPO inside TRL, side by side: TRL's GRPOTrainer vs RPOTrainer vs rpo-train's full path vs rpo-train's RPO.

Every run starts from the bundled recurrence task's warm model with the default recipe's batch and budget (16
questions x G = 8, at most 280 new tokens, T = 0.7, AdamW lr 2e-4 constant, grad clip 1, GRPO loss: sequence mean,
eps 0.2, beta 0.04, group-normalised advantages; ``--steps`` steps) and is its own process. The TRL arms get the same
prompts (BOS + question, the ids rpo-train feeds) and the same exact-answer reward; RPOTrainer runs the default
recipe's RPO settings (L = 30, suffix budget m, length-aware reward, 5% of the groups on the full path, eager cache
init, no drift refresh); ``--rpo-set`` overrides RPOConfig fields (a separate arm in the rows). Every arm is
evaluated the same way: greedy held-out accuracy on the 200 test questions with rpo-train's native engine, at each
``--eval-every`` steps; evaluation time is excluded from the run times (cache init included).

    python -m benchmarks.bench_trl --seeds 0 1 2 --threads 2
    python -m benchmarks.bench_trl --arms trl-rpo --seeds 0 1 2 --threads 2 --rpo-set rpo_refresh_drift=1 \
        rpo_full_share=0                                     # RPOTrainer with the flips guard

Rows go to ``benchmarks/results/trl/runs.csv``, curves to ``runs/<arm>_seed<S>.jsonl``; ``--report`` writes
``summary.json`` and ``trl.png`` from them.
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
from rpo_train.runtime.errors import ArgumentParser, report_usage_errors

from .bench_training import run_one, save_run
from .harness import RESULTS_DIR

ARMS = ("trl-grpo", "trl-rpo", "rpo-train-full", "rpo-train-rpo")
RPO_TRAIN_ARMS = {"rpo-train-full": "grpo", "rpo-train-rpo": "grpo+rpo"}
RECIPE = "tiny-cpu"


def _questions_and_model(steps: int):
    """The default recipe (its warm model resolved to a folder), its tokenizer and its train/test questions (BOS +
    question: the prompt ids rpo-train feeds)."""
    from transformers import AutoTokenizer

    from rpo_train.cli import resolve_model
    from rpo_train.config import load_recipe
    from rpo_train.data import load_questions

    cfg = resolve_model(load_recipe(RECIPE, [f"steps={steps}"]))
    tok = AutoTokenizer.from_pretrained(cfg.model)
    train, test = load_questions(cfg.data, tok)
    return cfg, tok, train, test


def trl_run(arm: str, seed: int, steps: int, eval_every: int, out: Path, extra: dict, lora: int = 0,
            lr: float | None = None, both: dict | None = None) -> dict:
    """One TRL arm in this process: its summary (accuracy, tokens, times, TRL's clipped ratio) and curve.
    ``extra``: RPOConfig fields over the default recipe's (RPOTrainer only); ``lora``: the rank of a LoRA adapter on
    every linear layer of both arms (0: full fine-tuning); ``lr``: both arms' learning rate (None: the recipe's);
    ``both``: GRPOConfig fields over the arms' shared settings (e.g. loss_type, beta)."""
    import copy

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback

    from rpo_train.groups import sample_and_score
    from rpo_train.integrations.trl import GRPOTrainer, RPOConfig, RPOTrainer
    from rpo_train.rewards import exact_answer_reward
    from rpo_train.rollout import NativeEngine, SamplingParams

    name, extra = run_name(arm, seed, {**(both or {}), **extra}, lora), dict(extra)
    cfg, tok, train, test = _questions_and_model(steps)
    data = Dataset.from_list([{"prompt": tok.bos_token + q.prompt, "answer": q.answer, "id": q.id} for q in train])

    def correct(completions, answer, **_):
        return [exact_answer_reward({"answer": a}, c).reward for c, a in zip(completions, answer)]

    def accuracy(model) -> float:
        model = copy.deepcopy(model).eval()
        if hasattr(model, "merge_and_unload"):  # a LoRA model: the native engine runs the merged weights
            model = model.merge_and_unload()
        engine = NativeEngine(model, eos_token_ids=[tok.eos_token_id])
        params = SamplingParams(cfg.eval_max_new_tokens, temperature=0.0, stop_token_ids=[tok.eos_token_id])
        out = sample_and_score(engine, test, params, tok, exact_answer_reward)
        return sum(s.correct for (s,) in out) / len(out)

    curve: list[dict] = []
    eval_s = [0.0]

    class Evaluate(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **_):
            if state.global_step % eval_every == 0 or state.global_step == steps:
                start = time.perf_counter()
                curve.append({"step": state.global_step, "eval/accuracy": accuracy(model)})
                eval_s[0] += time.perf_counter() - start

    args = dict(output_dir=str(out), per_device_train_batch_size=cfg.batch_questions * cfg.rollout.group_size,
                num_generations=cfg.rollout.group_size, max_completion_length=cfg.rollout.max_response_len,
                temperature=cfg.rollout.temperature, learning_rate=lr or cfg.optim.lr, lr_scheduler_type="constant",
                max_grad_norm=cfg.optim.grad_clip, weight_decay=cfg.optim.weight_decay, max_steps=steps,
                loss_type="grpo", beta=0.04, epsilon=0.2, logging_steps=1, report_to="none", save_strategy="no",
                use_cpu=True, seed=seed, bf16=False, disable_tqdm=True) | (both or {})
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32)
    before = accuracy(model)
    peft = None
    if lora:
        from peft import LoraConfig

        peft = LoraConfig(r=lora, lora_alpha=2 * lora, target_modules="all-linear", task_type="CAUSAL_LM")
    if arm == "trl-rpo":
        recipe = dict(rpo_max_cut=cfg.truncation.max_cut, rpo_full_share=cfg.cache.full_share,
                      rpo_cache_epsilon=cfg.cache.epsilon, rpo_length_aware=cfg.objective.length_aware,
                      rpo_refresh_drift=0.0, rpo_suffix_budget="m", rpo_cache_init="eager")
        rpo = ({} if extra.pop("defaults", False) else recipe) | extra  # defaults: RPOConfig's own
        trainer = RPOTrainer(model=model, reward_funcs=[correct], args=RPOConfig(**args, **rpo), train_dataset=data,
                             processing_class=tok, callbacks=[Evaluate()], peft_config=peft)
    else:
        from trl import GRPOConfig

        trainer = GRPOTrainer(model=model, reward_funcs=[correct], args=GRPOConfig(**args), train_dataset=data,
                              processing_class=tok, callbacks=[Evaluate()], peft_config=peft)
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start - eval_s[0]
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    rows = cfg.batch_questions * cfg.rollout.group_size
    if arm == "trl-rpo":
        per_sample = sum(h["rpo/suffix_length"] for h in logs) / len(logs)
        generated = trainer.rpo_state.generated_tokens
        init_s = trainer.rpo_state.init_s
    else:
        per_sample = sum(h["completions/mean_length"] for h in logs) / len(logs)
        generated, init_s = per_sample * rows * len(logs), 0.0
    for h in logs:
        point = next((c for c in curve if c["step"] == h["step"]), None)
        fields = {k: v for k, v in h.items()
                  if k in ("reward", "completions/mean_length", "step_time") or k.startswith("rpo/")}
        if point is None:
            curve.append({"step": h["step"], **fields})
        else:
            point.update(fields)
    curve.sort(key=lambda c: c["step"])
    summary = {"accuracy_before": before, "accuracy_after": curve[-1].get("eval/accuracy", float("nan")),
               "tokens_per_sample": per_sample, "tokens_generated": generated, "cache_init_s": init_s,
               "total_s": total, "step_s": (total - init_s) / steps, "rollout_s": 0.0, "train_s": 0.0,
               "refresh_share": (sum(h.get("rpo/full_path_share", 0.0) for h in logs) / len(logs)
                                 if arm == "trl-rpo" else 0.0), "steps": steps,
               "clipped_ratio": sum(h["completions/clipped_ratio"] for h in logs) / len(logs),
               "generated_per_sample": generated / (rows * steps), "lora": lora}
    return {"name": name, "summary": summary, "curve": curve}


def run_name(arm: str, seed: int, extra: dict, lora: int = 0) -> str:
    return "_".join([arm.replace("-", "_"), *([f"lora{lora}"] if lora else []),
                     *(f"{k}-{v}" for k, v in sorted(extra.items())), f"seed{seed}"])


def run_arm(arm: str, seed: int, steps: int, eval_every: int, work: Path, threads: int, extra: dict, lora: int = 0,
            lr: float | None = None, both: dict | None = None) -> dict:
    """One arm in its own process."""
    if arm in RPO_TRAIN_ARMS:
        result = run_one(RECIPE, RPO_TRAIN_ARMS[arm], seed, True, {}, steps, work / RECIPE, threads, eval_every)
        result["name"] = run_name(arm, seed, extra)
        return result
    out = work / "trl" / run_name(arm, seed, {**(both or {}), **extra}, lora)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else dict(os.environ)
    cmd = [sys.executable, "-m", "benchmarks.bench_trl", "--child", arm, "--seeds", str(seed), "--steps", str(steps),
           "--eval-every", str(eval_every), "--work", str(work), "--lora", str(lora),
           *(["--lr", str(lr)] if lr else []),
           "--rpo-set", *(f"{k}={json.dumps(v)}" for k, v in extra.items()),
           "--set", *(f"{k}={json.dumps(v)}" for k, v in (both or {}).items())]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{arm} seed {seed} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads((out / "result.json").read_text())


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=ARMS)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of each run (0: torch's default)")
    parser.add_argument("--work", default="runs/bench_trl", help="where run folders go")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR / "trl"))
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=JSON",
                        help="GRPOConfig fields of both TRL arms, e.g. loss_type='\"dapo\"' beta=0 (JSON values)")
    parser.add_argument("--rpo-set", nargs="*", default=[], metavar="FIELD=JSON",
                        help="RPOConfig fields for the RPOTrainer arm, e.g. rpo_refresh_drift=1 (JSON values)")
    parser.add_argument("--rpo-defaults", action="store_true",
                        help="the RPOTrainer arm on RPOConfig's defaults instead of the default recipe's settings")
    parser.add_argument("--lora", type=int, default=0, help="LoRA rank on every linear layer, both TRL arms (0: off)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate of the TRL arms (default: the recipe's)")
    parser.add_argument("--report", action="store_true", help="only write summary.json and trl.png from the rows")
    parser.add_argument("--child", choices=[a for a in ARMS if a not in RPO_TRAIN_ARMS], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    work, out_dir = Path(args.work), Path(args.out_dir)
    extra = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.rpo_set)}
    both = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.rpo_defaults:
        extra["defaults"] = True
    if args.child:
        folder = work / "trl" / run_name(args.child, args.seeds[0], {**both, **extra}, args.lora)
        result = trl_run(args.child, args.seeds[0], args.steps, args.eval_every, folder, extra, args.lora, args.lr,
                         both)
        atomic_write(folder / "result.json", lambda tmp: Path(tmp).write_text(json.dumps(result)))
        return
    if not args.report:
        for seed in args.seeds:
            for arm in args.arms:
                mine = extra if arm == "trl-rpo" else {}
                result = run_arm(arm, seed, args.steps, args.eval_every, work, args.threads, mine, args.lora, args.lr,
                                 both)
                label = arm + (f" lora{args.lora}" if args.lora else "") + "".join(
                    f" {k}={v}" for k, v in sorted({**both, **mine}.items()))
                save_run(result, "tiny-cpu/trl", label, seed, arm != "trl-grpo", mine, args.steps,
                         out_dir / "runs.csv", out_dir / "runs")  # TRL's GRPOTrainer has no length-aware reward
                s = result["summary"]
                summaries = out_dir / "summaries.jsonl"  # every summary field (clipped ratio, LoRA rank, ...)
                text = summaries.read_text() if summaries.is_file() else ""
                line = json.dumps({"run": result["name"], "arm": label, "seed": seed, **s})
                atomic_write(summaries, lambda tmp, body=text + line + "\n": Path(tmp).write_text(body))
                print(f"{label} seed {seed}: accuracy {s['accuracy_before']:.3f} -> {s['accuracy_after']:.3f}, "
                      f"{s['tokens_per_sample']:.1f} tokens/sample, clipped {s.get('clipped_ratio', 0):.3f}, "
                      f"{s['total_s']:.1f} s", flush=True)
    from .trl_report import report

    print(report(out_dir))


if __name__ == "__main__":
    sys.exit(report_usage_errors("benchmarks.bench_trl", lambda: main() or 0))

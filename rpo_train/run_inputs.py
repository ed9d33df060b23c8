"""What a run reads before it starts, checked and loaded once: the machine, the output folder, the policy and its
tokenizer, the rollout engine serving it (``build_engine``), the questions (``rpo_train.data.Question``, prompt ids
and cache keys included) and the reward. The trainer and ``rpo-analyze`` both start from it."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import RunConfig
from .data import Question, load_questions
from .model.precision import Precision, resolve_precision
from .rewards import REWARDS, RewardFn
from .rollout.model_folder import check_finite_weights, eos_token_ids, model_dir
from .runtime.errors import UsageError, one_line
from .runtime.preflight import check_device, check_out_dir, check_reward


@dataclass
class RunInputs:
    """The loaded inputs of one run: the policy (``model``, in the run's master dtype), its ``tokenizer``, the
    rollout ``engine``, ``reward_fn(question, text)``, the ``stop_ids`` of generation, the training and held-out
    questions, and the resolved ``precision``."""

    model: torch.nn.Module
    tokenizer: object
    engine: object
    reward_fn: RewardFn
    stop_ids: list[int]
    train_questions: list[Question]
    test_questions: list[Question]
    precision: Precision


def load_policy(path: str, dtype: torch.dtype, device: str):
    """(HF causal LM on ``device`` in ``dtype``, its tokenizer) from the local checkpoint folder ``path``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_dir(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to load the user's folder is reported with its path
        raise UsageError(f"model={path}: the checkpoint cannot be loaded ({one_line(exc)})") from exc
    check_finite_weights(model, folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"model={path}: the tokenizer cannot be loaded ({one_line(exc)}); the folder needs "
                         "tokenizer.json or tokenizer_config.json") from exc
    return model.to(device), tokenizer


def build_engine(cfg: RunConfig, model, dtype: torch.dtype):
    """The rollout engine of ``cfg.rollout.engine`` serving the trainer's model in ``dtype`` (the run's
    ``rpo_train.model.precision.Precision.engine``; weights pushed every step, cast to it)."""
    from .rollout import HFEngine, NativeEngine, NativeEngineConfig, VLLMEngine

    eos = eos_token_ids(Path(cfg.model), model.config)
    if cfg.rollout.engine == "vllm":
        return VLLMEngine.from_pretrained(cfg.model, dtype=dtype)
    copied = copy.deepcopy(model).eval().to(dtype)
    if cfg.rollout.engine == "hf":
        return HFEngine(copied, eos_token_ids=eos)
    budget = NativeEngineConfig(kv_budget_bytes=max(1, round(cfg.rollout.kv_budget_gib * 2**30)))
    return NativeEngine(copied, eos_token_ids=eos, config=budget)


def load_run_inputs(cfg: RunConfig, device: str, *, reward_fn: RewardFn | None = None) -> RunInputs:
    """Check and load everything ``cfg`` names, on ``device``; every problem is a ``UsageError`` naming it. The
    ``"auto"`` precision settings are resolved here, on the machine that runs."""
    check_device(device)
    check_out_dir(cfg.out_dir)
    if reward_fn is None:
        check_reward(cfg.reward)
    precision = resolve_precision(device, cfg.dtype, cfg.rollout.dtype)
    model, tokenizer = load_policy(cfg.model, precision.master, device)
    train, test = load_questions(cfg.data, tokenizer)
    engine = build_engine(cfg, model, precision.engine)
    limit = model.config.max_position_embeddings
    for q in train + test:
        if len(q.prompt_ids) + cfg.rollout.max_response_len > limit:
            raise UsageError(f"question {q.id!r}: prompt ({len(q.prompt_ids)} tokens) + rollout.max_response_len "
                             f"({cfg.rollout.max_response_len}) exceed the model's {limit} positions; lower "
                             "rollout.max_response_len")
    stop_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if reward_fn is None and cfg.reward == "task":
        from .data.gym import gym_reward

        reward_fn = gym_reward(cfg.data)
    return RunInputs(model, tokenizer, engine, reward_fn or REWARDS[cfg.reward], stop_ids, train, test, precision)

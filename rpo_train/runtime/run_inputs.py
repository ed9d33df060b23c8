"""What a run reads before it starts, checked and loaded once: the machine, the output folder, the policy and its
tokenizer, the data rows and their prompt ids, the reward and the rollout engine. The trainer and ``rpo-analyze``
both start from it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cache import question_id
from ..config import RunConfig
from ..data import encode_prompt, load_rows
from ..groups import build_engine
from ..model.precision import Precision, resolve_precision
from ..rewards import REWARDS, RewardFn
from .errors import UsageError
from .preflight import check_device, check_out_dir, check_reward, load_policy


@dataclass
class RunInputs:
    """The loaded inputs of one run. ``prompts`` maps each row's ``qid`` (set on the row) to its prompt ids."""

    model: torch.nn.Module
    tokenizer: object
    engine: object
    reward_fn: RewardFn
    stop_ids: list[int]
    train_rows: list[dict]
    test_rows: list[dict]
    prompts: dict[str, list[int]]
    precision: Precision


def load_run_inputs(cfg: RunConfig, device: str, *, reward_fn: RewardFn | None = None) -> RunInputs:
    """Check and load everything ``cfg`` names, on ``device``; every problem is a ``UsageError`` naming it."""
    check_device(device)
    check_out_dir(cfg.out_dir)
    if reward_fn is None:
        check_reward(cfg.reward)
    precision = resolve_precision(device, cfg.dtype, cfg.rollout.dtype)
    model, tokenizer = load_policy(cfg.model, precision.master, device)
    train_rows, test_rows = load_rows(cfg.data)
    engine = build_engine(cfg, model, precision.engine)
    prompts: dict[str, list[int]] = {}
    limit = model.config.max_position_embeddings
    for row in train_rows + test_rows:
        ids = encode_prompt(tokenizer, row["question"])
        if len(ids) + cfg.rollout.max_response_len > limit:
            raise UsageError(f"question {row['id']!r}: prompt ({len(ids)} tokens) + rollout.max_response_len "
                             f"({cfg.rollout.max_response_len}) exceed the model's {limit} positions; lower "
                             "rollout.max_response_len")
        row["qid"] = question_id(ids)
        prompts[row["qid"]] = ids
    stop_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if reward_fn is None and cfg.reward == "task":
        from ..data.gym import gym_reward

        reward_fn = gym_reward(cfg.data)
    return RunInputs(model, tokenizer, engine, reward_fn or REWARDS[cfg.reward], stop_ids, train_rows, test_rows,
                     prompts, precision)

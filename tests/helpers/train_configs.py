"""Run configurations, the smallest CLI recipe and a toy reward shared by the training and CLI tests."""

from __future__ import annotations

import json
from pathlib import Path

from rpo_train.cache import CacheConfig
from rpo_train.config import OptimConfig, RolloutConfig, RunConfig
from rpo_train.cuts import TruncationConfig
from rpo_train.data.config import BundledData
from rpo_train.objectives import ObjectiveConfig
from rpo_train.rewards import RewardResult


def ones_reward(row, text):
    """A toy reward with variance on a random model: responses whose count of '1' is a multiple of 3."""
    ok = text.count("1") % 3 == 0
    return RewardResult(float(ok), ok)


def small_recipe(path, checkpoint, **top) -> None:
    """Write the smallest CLI recipe (2-digit addition, 2 questions x G = 2, 16 new tokens, L = 4) on ``checkpoint``
    to ``path``; ``top``: top-level keys (steps, out_dir, eval_every, ...) written first, in their order."""
    head = "".join(f"{key}: {value}\n" for key, value in top.items())
    path.write_text(f"model: {checkpoint}\n{head}batch_questions: 2\neval_max_new_tokens: 8\nreward: exact\n"
                    "data: {task: addition, digits: 2, n_train: 4, n_test: 2}\n"
                    "rollout: {engine: native, group_size: 2, max_response_len: 16}\n"
                    "truncation: {mode: fixed, max_cut: 4}\n")


def config(checkpoint, out, mode="rpo", algorithm="grpo", steps=3, engine="native", **kw):
    return RunConfig(model=str(checkpoint), out_dir=str(out), steps=steps, batch_questions=kw.pop("batch_questions", 4),
                     eval_every=2, save_every=kw.pop("save_every", 2), eval_max_new_tokens=12,
                     data=BundledData(task="addition", n_train=12, n_test=4),
                     rollout=RolloutConfig(engine=engine, group_size=4, max_response_len=30, temperature=1.0),
                     optim=OptimConfig(lr=1e-2, micro_batch=8),
                     objective=ObjectiveConfig.preset(algorithm, mode=mode,
                                                      overlong_buffer=6 if algorithm == "dapo" else 0),
                     truncation=kw.pop("truncation", TruncationConfig("fixed", max_cut=8)), **kw)


def guarded(checkpoint, out, **kw):
    """``config`` with every drift guard and cut option on: refreshes by reuses and by share, adaptive L, cuts at
    entropy peaks (their state lives in the cache and must survive a checkpoint); the cache init eager, so that a
    run resumed with more steps matches one started with them (auto would pick lazy for the shorter one)."""
    return config(checkpoint, out, cache=CacheConfig(init="eager", max_reuses=2, full_share=0.25, refresh_drift=0.5),
                  truncation=TruncationConfig("adaptive", max_cut=8, min_cut=2, cut_at="entropy"), **kw)


def lazy(checkpoint, out, **kw):
    """``config`` with the lazy cache init and 2 questions a step: 4 steps visit at most 8 of the 12 questions, so a
    run stopped after step 2 resumes with questions still to initialise."""
    return config(checkpoint, out, cache=CacheConfig(init="lazy"), batch_questions=2, **kw)


def latest_state_file(out) -> Path:
    """The ``state.json`` of the newest checkpoint under ``out`` (a test edits it to stand for an older run)."""
    pointer = json.loads((Path(out) / "checkpoints" / "latest.json").read_text())
    return Path(out) / "checkpoints" / pointer["dir"] / "state.json"

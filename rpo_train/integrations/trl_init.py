"""RPOTrainer's cache init: which mode a run takes, and the eager init streamed over the training dataset.

``rpo_cache_init="auto"`` is lazy when the run's generation rounds visit fewer questions than the dataset holds (the
questions never drawn are never sampled), else eager. Eager reads the dataset in chunks (never whole), keeps the first
row of each question, has every process sample its share of a chunk's new questions (the same number of calls on
every process: generation may be collective), and stores the responses through ``rpo_train.cache_init.store``, as
rpo-train does; a progress bar runs on the main process. Lazy init samples, at the start of a generation round, one
response for each of the round's questions the cache lacks (gathered over processes, one batch) and the round then
cuts from it like any other entry (never G full-path samples per first visit). Time and tokens go to the run state,
and from there to TRL's logs (``rpo/init_s``, ``rpo/init_tokens``).
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from ..cache_init import InitResponse, init_mode, store
from ..data.question import Question
from .trl_config import gather_object
from .trl_rewards import correctness
from .trl_rows import row_key


def resolve_init_mode(trainer) -> str:
    """``rpo_cache_init`` resolved for this run (see the module docstring)."""
    args, data = trainer.args, trainer.train_dataset
    if args.rpo_cache_init != "auto":
        return args.rpo_cache_init
    if not hasattr(data, "__len__"):
        return "lazy"
    if args.max_steps <= 0:
        return "eager" if args.num_train_epochs >= 1 else "lazy"
    micro_steps = args.max_steps * args.gradient_accumulation_steps
    rounds = math.ceil(micro_steps / (args.steps_per_generation * trainer.num_iterations))
    questions_per_round = args.generation_batch_size // trainer.num_generations
    return init_mode("auto", rounds, questions_per_round, len(data))


def eager_init(trainer, chunk: int | None = None) -> None:
    """One response per distinct training question from the current policy, into ``trainer.rpo_cache``."""
    data, acc, args = trainer.train_dataset, trainer.accelerator, trainer.args
    if not hasattr(data, "__len__"):
        raise ValueError("RPOConfig.rpo_cache_init='eager' needs a map-style train_dataset (an iterable one has no "
                         "end to initialise from); use rpo_cache_init='lazy'")
    chunk = chunk or args.per_device_train_batch_size * acc.num_processes
    bar = tqdm(total=len(data), desc="RPO cache init", unit="row", disable=not acc.is_main_process)
    for lo in range(0, len(data), chunk):
        rows = [data[i] for i in range(lo, min(lo + chunk, len(data)))]
        prompt_ids = [[int(t) for t in p] for p in trainer._tokenize_prompts([r["prompt"] for r in rows])[0]]
        keys = [row_key(r, p, args.rpo_key_column) for r, p in zip(rows, prompt_ids)]
        init_rows(trainer, rows, prompt_ids, keys, shared=True)
        bar.update(len(rows))
    bar.close()


def init_rows(trainer, rows: list[dict], prompt_ids: list[list[int]], keys: list[str], shared: bool) -> None:
    """Sample and store one response for each question of ``rows`` that the cache lacks (the first row of each).

    ``shared``: every process holds the same rows (eager chunks); else each holds its own (a generation round's
    rows, lazy init) and they are gathered first. Each process samples its share; every process makes the same
    calls with as many rows (a process short of rows pads with one it then drops) and stores every response."""
    start = time.perf_counter()
    acc, settings = trainer.accelerator, trainer.rpo_settings
    local = [(k, p, r) for k, p, r in zip(keys, prompt_ids, rows) if k not in trainer.rpo_cache]
    todo: dict = {}
    for k, p, r in (local if shared else [x for part in gather_object([local]) for x in part]):
        todo.setdefault(k, (p, r))
    if not todo:
        return
    todo_list = list(todo.items())
    share = -(-len(todo_list) // acc.num_processes)
    mine = todo_list[acc.process_index * share:(acc.process_index + 1) * share]
    asked = [p for _, (p, _) in mine] + [todo_list[0][1][0]] * (share - len(mine))  # equal counts everywhere
    ids, _ = trainer._sample(asked, [settings.max_len] * len(asked), 1)
    logprobs = trainer._rpo_logprobs(asked, ids) if settings.cache.refresh_drift else [[]] * len(ids)
    found = []
    if mine:
        correct = init_correct(trainer, [r for _, (_, r) in mine], ids[:len(mine)])  # not the padding
        found = [(k, i, c, lp) for (k, _), i, c, lp in zip(mine, ids, correct, logprobs)]
    for key, response, ok, lps in sorted(x for part in gather_object([found]) for x in part):
        question = Question(key, key, "", "", todo[key][0])
        store(trainer.rpo_cache, [question], [InitResponse(response, float(ok), ok, lps, len(response))],
              settings.truncation.initial_limit())
        trainer.rpo_state.init_tokens += len(response)
        trainer.rpo_state.generated_tokens += len(response)
    trainer.rpo_state.init_s += time.perf_counter() - start


def init_correct(trainer, rows: list[dict], ids: list[list[int]]) -> list[bool]:
    """Whether the correctness reward calls each init response correct (False when it is a reward model, which
    would need TRL's batching)."""
    func = trainer.reward_funcs[trainer.rpo_correct_index]
    if isinstance(func, torch.nn.Module) or not callable(func):
        return [False] * len(rows)
    texts = trainer.processing_class.batch_decode(ids, skip_special_tokens=True)
    if rows and isinstance(rows[0]["prompt"], list):
        texts = [[{"role": "assistant", "content": t}] for t in texts]
    columns = {k: [r[k] for r in rows] for k in rows[0] if k not in ("prompt", "completion")} if rows else {}
    values = func(prompts=[r["prompt"] for r in rows], completions=texts, completion_ids=ids,
                  trainer_state=trainer.state, log_extra=lambda *a, **k: None, log_metric=lambda *a, **k: None,
                  **columns)
    values = [float("nan") if v is None else float(v) for v in values]
    return correctness(values, trainer.args.rpo_correct_threshold, trainer.reward_func_names[trainer.rpo_correct_index])

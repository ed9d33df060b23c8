"""The warm starts of the bundled tasks: a tiny model trained briefly on worked solutions, most of them flawed
(``task.solution(row, flawed=True)``: forgotten carries for addition, a second-guessed closing for the recurrence;
``recurrence_sum`` draws one of several flawed closing habits).
The model learns the flawed habit as its most likely path while still sampling the correct one sometimes: an
imperfect start that RL can improve.

A warm start learns from its own questions: the task's default train split (the first 400 recurrence questions, 2000
addition ones, of the data seed), whatever sizes a run asks for; the run's test split never holds them
(``rpo_train.task.sizes``). So a model is keyed by its settings and what generates its questions (the task, its
``terms`` / ``digits``, ``seed``), never by the run's ``data.n_train`` / ``data.n_test`` (``<name>-<key>``, e.g.
``tiny-recurrence-666ff87ece2a``). The bundled recipes' models ship with the package
(``rpo_train/task/models/<name>-<key>``, each with the call that rebuilds it in its ``warm_start.json``); another
generator's model is built once by ``rpo-train`` (minutes on 2 cores) and cached under ``$RPO_CACHE_DIR`` (default
``~/.cache/rpo``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from ..runtime.atomic import atomic_directory
from ..runtime.errors import UsageError
from . import make_task
from .tokenizer import make_tiny_checkpoint


@dataclass(frozen=True)
class WarmStartConfig:
    """Supervised warm start of a tiny Llama on ``task``: ``steps`` AdamW steps of ``batch`` solutions, a
    ``correct_share`` of them correct and the rest flawed."""

    hidden: int = 64
    layers: int = 2
    steps: int = 1000
    batch: int = 64
    lr: float = 3e-3
    correct_share: float = 0.35
    seed: int = 0
    task: str = "addition"
    max_positions: int = 160
    train_prompt: bool = False  # also learn the prompt's worked steps (all but its first 6 tokens)


WARM_STARTS = {"tiny-addition": WarmStartConfig(),
               "tiny-recurrence": WarmStartConfig(steps=900, batch=32, correct_share=0.3, task="recurrence",
                                                  max_positions=320, train_prompt=True),
               "tiny-recurrence-sum": WarmStartConfig(steps=1800, batch=32, correct_share=0.07, task="recurrence_sum",
                                                      max_positions=320, train_prompt=True)}


def cache_root() -> Path:
    """Where models built on demand are cached: ``$RPO_CACHE_DIR``, default ``~/.cache/rpo``."""
    return Path(os.environ.get("RPO_CACHE_DIR", Path.home() / ".cache" / "rpo"))


def shipped_root() -> Path:
    """The warm-started models shipped as package data, one folder ``<name>-<key>`` each."""
    return Path(__file__).resolve().parent / "models"


@contextlib.contextmanager
def transformers_bars_off() -> Iterator[None]:
    """transformers' own progress bars ("Loading weights", "Writing model shards") off inside the block, restored
    after."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _encode(tok, task, row: dict, flawed: bool | str) -> tuple[list[int], list[int]]:
    prompt = [tok.bos_token_id] + tok.encode(row["question"], add_special_tokens=False)
    answer = tok.encode(task.solution(row, flawed), add_special_tokens=False)
    return prompt, answer + [tok.eos_token_id]


def _flaw(task, rng: random.Random, correct_share: float) -> bool | str:
    """Whether a warm-start solution is flawed; a task with several flawed habits (``draw_habit``) names the one."""
    flawed = rng.random() >= correct_share
    return task.draw_habit(rng) if flawed and hasattr(task, "draw_habit") else flawed


def _fit(model, tok, task, cfg: WarmStartConfig, bar) -> float:
    """``cfg.steps`` AdamW steps on batches of worked solutions to ``task``'s train split (the warm start's own
    questions; ``bar`` counts the steps); the last loss."""
    rows, _ = task.splits()
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * max(0.1, 1 - s / cfg.steps))
    loss_value = float("nan")
    for _ in range(cfg.steps):
        pairs = [_encode(tok, task, row, _flaw(task, rng, cfg.correct_share)) for row in rng.sample(rows, cfg.batch)]
        length = max(len(p) + len(a) for p, a in pairs)
        ids = torch.full((cfg.batch, length), tok.pad_token_id)
        mask = torch.zeros(cfg.batch, length)
        for i, (p, a) in enumerate(pairs):
            ids[i, :len(p) + len(a)] = torch.tensor(p + a)
            mask[i, min(7, len(p)) if cfg.train_prompt else len(p):len(p) + len(a)] = 1
        logits = model(input_ids=ids).logits[:, :-1]
        per_tok = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        loss = (per_tok * mask[:, 1:]).sum() / mask[:, 1:].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_value = float(loss.detach())
        bar.set_postfix_str(f"training, loss {loss_value:.3f}", refresh=False)
        bar.update()
    return loss_value


def train_warm_start(path: Path, cfg: WarmStartConfig, task) -> dict:
    """Supervised warm start on ``task``'s train split only, with a progress bar on stderr over its phases (random
    model, training steps, saving); returns its stats (time, final loss)."""
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    with tqdm(total=cfg.steps, desc=f"warm start ({cfg.task})", unit="step", file=sys.stderr) as bar:
        bar.set_postfix_str("random model")
        tok = task.tokenizer()
        make_tiny_checkpoint(path, hidden=cfg.hidden, layers=cfg.layers, seed=cfg.seed,
                             max_positions=cfg.max_positions, tokenizer=tok)
        model = AutoModelForCausalLM.from_pretrained(path).train()
        loss_value = _fit(model, tok, task, cfg, bar)
        bar.set_postfix_str("saving")
        model.save_pretrained(path)
    return {"warm_start_s": time.perf_counter() - start, "final_loss": loss_value}


def warm_start_spec(name: str, data_cfg) -> tuple[str, WarmStartConfig, object]:
    """(folder name ``<name>-<key>``, warm-start settings, the warm start's task) of the builtin model ``name`` for a
    run on ``data_cfg``. The warm start's task is the run's at the task's default sizes (its questions: the default
    train split), so the key, which hashes the settings and that task, ignores the run's sizes; a run whose test split
    would hold the warm start's questions is refused, naming ``data.n_test``."""
    if name not in WARM_STARTS:
        raise UsageError(f"model=builtin:{name}: unknown builtin model; known: "
                         f"{['builtin:' + n for n in sorted(WARM_STARTS)]}")
    cfg = WARM_STARTS[name]
    if data_cfg.task != cfg.task:
        raise UsageError(f"model=builtin:{name} is warm-started on the {cfg.task} task; set data.task={cfg.task} "
                         f"(got data.task={data_cfg.task})")
    task = warm_task(name, make_task(data_cfg))
    settings = asdict(cfg)
    if cfg.task == "addition":  # the key the addition warm start had before tasks were named: its cache stays valid
        settings = {k: v for k, v in settings.items() if k not in ("task", "max_positions", "train_prompt")}
    key = hashlib.sha1(json.dumps([settings, asdict(task)], sort_keys=True).encode()).hexdigest()[:12]
    return f"{name}-{key}", cfg, task


def warm_task(name: str, run_task):
    """``run_task`` at its class's default sizes (the sizes the shipped models were built with), after checking that
    its generator holds them and that the run's test split leaves the warm start's questions out."""
    train, test = type(run_task).n_train, type(run_task).n_test
    if run_task.capacity < train + test:  # only addition's generator can be this small (data.digits=1)
        raise UsageError(f"data.digits={run_task.digits} gives {run_task.capacity} distinct questions; "
                         f"model=builtin:{name} is warm-started and tested on {train + test} (set data.digits >= 2)")
    if run_task.n_test > run_task.capacity - train:
        raise UsageError(f"data.n_test must be at most {run_task.capacity - train} with model=builtin:{name} (its "
                         f"warm start learned the first {train} of the task's {run_task.capacity} questions, which the "
                         f"test split leaves out), got {run_task.n_test}")
    return replace(run_task, n_train=train, n_test=test)


def build_warm_model(name: str, data_cfg, root: Path) -> Path:
    """Train the builtin model ``name`` on ``data_cfg`` into ``root/<name>-<key>`` (written atomically) and return
    that folder. Its ``warm_start.json`` records the settings, the data, the versions and threads it was built with,
    its stats, and the call that rebuilds it (``rebuild``)."""
    folder, cfg, task = warm_start_spec(name, data_cfg)
    keys = {f.name for f in fields(data_cfg)}  # the data config's share of the task's settings: what rebuilds it
    data = {"task": cfg.task, **{k: v for k, v in asdict(task).items() if k in keys}}

    def build(tmp: Path) -> None:
        import transformers

        with transformers_bars_off():
            stats = train_warm_start(tmp, cfg, task)
        args = ", ".join(f"{k}={v!r}" for k, v in data.items())
        threads = torch.get_num_threads()
        record = {**asdict(cfg), **stats, "builtin": name, "folder": folder, "data": data,
                  "torch": torch.__version__, "transformers": transformers.__version__, "threads": threads,
                  "rebuild": (f"import torch; torch.set_num_threads({threads}); from pathlib import Path; "
                              "from rpo_train.data.config import BundledData; "
                              "from rpo_train.task.warmstart import build_warm_model; "
                              f"build_warm_model({name!r}, BundledData({args}), Path('.'))")}
        (tmp / "warm_start.json").write_text(json.dumps(record, indent=1) + "\n")

    return atomic_directory(root / folder, build)


def ensure_warm_model(name: str, data_cfg) -> Path:
    """Folder of the warm-started model ``name`` for ``data_cfg``: the shipped one with its exact key, else the cached
    one, else built now (a few minutes on 2 cores, with a progress bar) and cached."""
    folder, _, _ = warm_start_spec(name, data_cfg)
    for root in (shipped_root(), cache_root()):
        if (root / folder / "warm_start.json").is_file():
            return root / folder
    print(f"warm start: no shipped model {folder} for this data config; building it once into {cache_root()}",
          file=sys.stderr)
    return build_warm_model(name, data_cfg, cache_root())

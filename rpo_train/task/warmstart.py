"""The warm starts of the bundled tasks: a tiny model trained briefly on worked solutions, most of them flawed
(``task.solution(row, flawed=True)``: forgotten carries for addition, a second-guessed closing for the recurrence;
``recurrence_sum`` draws one of several flawed closing habits).
The model learns the flawed habit as its most likely path while still sampling the correct one sometimes: an
imperfect start that RL can improve.

Built once by ``rpo-train`` and cached under ``$RPO_CACHE_DIR`` (default ``~/.cache/rpo``), keyed by its settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..atomic import atomic_directory
from ..errors import UsageError
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
    return Path(os.environ.get("RPO_CACHE_DIR", Path.home() / ".cache" / "rpo"))


def _encode(tok, task, row: dict, flawed: bool | str) -> tuple[list[int], list[int]]:
    prompt = [tok.bos_token_id] + tok.encode(row["question"], add_special_tokens=False)
    answer = tok.encode(task.solution(row, flawed), add_special_tokens=False)
    return prompt, answer + [tok.eos_token_id]


def _flaw(task, rng: random.Random, correct_share: float) -> bool | str:
    """Whether a warm-start solution is flawed; a task with several flawed habits (``draw_habit``) names the one."""
    flawed = rng.random() >= correct_share
    return task.draw_habit(rng) if flawed and hasattr(task, "draw_habit") else flawed


def train_warm_start(path: Path, cfg: WarmStartConfig, task) -> dict:
    """Supervised warm start on the train split only; returns its stats (time, final loss)."""
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    tok = task.tokenizer()
    make_tiny_checkpoint(path, hidden=cfg.hidden, layers=cfg.layers, seed=cfg.seed,
                         max_positions=cfg.max_positions, tokenizer=tok)
    model = AutoModelForCausalLM.from_pretrained(path).train()
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
    model.save_pretrained(path)
    return {"warm_start_s": time.perf_counter() - start, "final_loss": loss_value}


def ensure_warm_model(name: str, data_cfg) -> Path:
    """Path of the cached warm-started model ``name``; trained (a few minutes on 2 cores) on first use."""
    if name not in WARM_STARTS:
        raise UsageError(f"model=builtin:{name}: unknown builtin model; known: "
                         f"{['builtin:' + n for n in sorted(WARM_STARTS)]}")
    cfg = WARM_STARTS[name]
    if data_cfg.task != cfg.task:
        raise UsageError(f"model=builtin:{name} is warm-started on the {cfg.task} task; set data.task={cfg.task} "
                         f"(got data.task={data_cfg.task})")
    task = make_task(data_cfg)
    settings = asdict(cfg)
    if cfg.task == "addition":  # the key the addition warm start had before tasks were named: its cache stays valid
        settings = {k: v for k, v in settings.items() if k not in ("task", "max_positions", "train_prompt")}
    key = hashlib.sha1(json.dumps([settings, asdict(task)], sort_keys=True).encode()).hexdigest()[:12]
    final = cache_root() / f"{name}-{key}"
    if (final / "warm_start.json").is_file():
        return final

    def build(tmp: Path) -> None:
        stats = train_warm_start(tmp, cfg, task)
        (tmp / "warm_start.json").write_text(json.dumps({**asdict(cfg), **stats}, indent=1))

    return atomic_directory(final, build)

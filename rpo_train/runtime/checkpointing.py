"""Checkpoints of a run: model, optimizer, scheduler, experience cache, RNG and step, safe against ``kill -9``.

Layout under ``<out_dir>/checkpoints``: ``step-000040/`` holds ``model.safetensors``, ``optimizer.safetensors``,
``cache.safetensors``, ``rng.safetensors`` and ``state.json``; ``latest.json`` names the newest complete one. A
checkpoint is written into a hidden temporary folder, flushed, renamed into place, and only then does ``latest.json``
(itself replaced atomically) point to it: a crash at any moment leaves the previous checkpoint intact, and so does a
write that fails (disk full: ``WriteFailedError`` naming the file, the partial folder removed). No pickle.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from .atomic import atomic_directory, atomic_write_json, writing
from .errors import UsageError, one_line
from .finite import check_finite
from .run_state import RunState
from .sharding import full_optimizer_state, full_state_dict, load_full_state

FORMAT = "rpo-checkpoint/1"


def _optimizer_to_files(optimizer: torch.optim.Optimizer, sd: dict | None = None) -> tuple[dict, dict]:
    sd = optimizer.state_dict() if sd is None else sd
    tensors = {f"state/{idx}/{key}": (v if isinstance(v, torch.Tensor) else torch.tensor(v)).contiguous()
               for idx, st in sd["state"].items() for key, v in st.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def _optimizer_state_from_files(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, idx, key = name.split("/", 2)
        state.setdefault(int(idx), {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(out_dir: str | os.PathLike, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, cache, rng: random.Random, extra: dict, keep: int = 2, *,
                    model_state: dict | None = None, optimizer_state: dict | None = None) -> Path:
    """Write checkpoint ``step`` and point ``latest.json`` to it; keep the newest ``keep`` checkpoints. ``cache``
    (an ``rpo_train.cache.ExperienceCache``) writes itself with ``cache.save(path)``.

    ``model_state`` / ``optimizer_state`` (whole tensors, e.g. gathered from shards) replace the modules' own.
    """
    root = Path(out_dir) / "checkpoints"
    final = root / f"step-{step:06d}"

    def build(tmp: Path) -> None:  # each file's write error names the file (its place in ``final``)
        with writing(tmp / "model.safetensors"):
            if model_state is None:
                save_model(model, str(tmp / "model.safetensors"))
            else:
                save_file({k: v.contiguous() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
        opt_tensors, opt_meta = _optimizer_to_files(optimizer, optimizer_state)
        with writing(tmp / "optimizer.safetensors"):
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        cache.save(tmp / "cache.safetensors")
        with writing(tmp / "rng.safetensors"):
            save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        state = {"format": FORMAT, "step": step, "optimizer": opt_meta,
                 "scheduler": scheduler.state_dict() if scheduler is not None else None,
                 "python_rng": [rng.getstate()[0], list(rng.getstate()[1]), rng.getstate()[2]], **extra}
        with writing(tmp / "state.json"), open(tmp / "state.json", "w") as f:
            json.dump(state, f)

    atomic_directory(final, build)
    atomic_write_json(root / "latest.json", {"step": step, "dir": final.name})
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder, or None when the run has none. A damaged pointer or a missing folder
    is a ``UsageError`` naming it (nothing is deleted: the user decides)."""
    pointer = Path(out_dir) / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    try:
        with pointer.open() as f:
            folder = Path(out_dir) / "checkpoints" / str(json.load(f)["dir"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"checkpoint pointer {pointer} is damaged ({one_line(exc)}); it should be "
                         '{"step": N, "dir": "step-00000N"}: fix it, or move the out_dir away to start afresh') from exc
    if not (folder / "state.json").is_file():
        raise UsageError(f"{pointer} names {folder}, which is missing or incomplete; point it at another "
                         "step-* folder, or move the out_dir away to start afresh")
    return folder


def _read(folder: Path, name: str, read):
    """``read(path)`` of a checkpoint file; any failure is a ``UsageError`` naming the file."""
    try:
        return read(folder / name)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file is reported with its path
        raise UsageError(f"checkpoint file {folder / name} cannot be read ({one_line(exc)})") from exc


def load_checkpoint(folder: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    rng: random.Random, load_state=None) -> tuple[dict, Path]:
    """Restore model, optimizer, scheduler and RNG in place; returns (state.json contents, the experience cache's
    file, for ``rpo_train.cache.ExperienceCache.load``).

    ``load_state(model_tensors, optimizer_state)``, when given, installs the model and optimizer tensors instead
    (e.g. into shards, ``rpo_train.runtime.sharding.load_full_state``).
    """
    folder = Path(folder)
    state = _read(folder, "state.json", lambda p: json.loads(p.read_text()))
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise UsageError(f"{folder} is not an rpo checkpoint (format {found!r}, expected {FORMAT!r})")
    tensors = _read(folder, "optimizer.safetensors", lambda p: load_file(str(p)))
    optimizer_state = _optimizer_state_from_files(tensors, state["optimizer"])
    weights = folder / "model.safetensors"
    if load_state is not None:
        tensors = _read(folder, "model.safetensors", lambda p: load_file(str(p)))
        _check_weights(tensors.items(), f"checkpoint {weights}")
        load_state(tensors, optimizer_state)
    else:
        try:
            load_model(model, str(weights))
        except Exception as exc:  # noqa: BLE001 - another model's weights, or a damaged file
            raise UsageError(f"checkpoint {weights} does not fit the model or cannot be read "
                             f"({one_line(exc)[:300]})") from exc
        _check_weights(model.state_dict().items(), f"checkpoint {weights}")
        try:
            optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError) as exc:
            raise UsageError(f"checkpoint {folder / 'optimizer.safetensors'} does not fit the optimizer "
                             f"({one_line(exc)})") from exc
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    version, internal, gauss = state["python_rng"]
    rng.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(_read(folder, "rng.safetensors", lambda p: load_file(str(p))["torch"]))
    return state, folder / "cache.safetensors"


def _check_weights(named, where: str) -> None:
    """No run resumes from, and no checkpoint holds, NaN or inf weights (``rpo_train.runtime.finite``)."""
    check_finite(named, where, "the run diverged before it: lower optim.lr, or resume from an earlier checkpoint")


def save_run(trainer) -> Path | None:
    """Checkpoint a ``rpo_train.trainer.Trainer`` (rank 0 writes, every rank waits): weights, optimizer, scheduler,
    cache, RNG, the run state (``trainer.run``) and the config; first checks that every rank holds the
    same cache and that the weights are finite (a ``NonFiniteError`` rather than a checkpoint of a diverged run)."""
    t = trainer
    digests = t.dist.gather(t.cache.digest())
    if len(set(digests)) != 1:
        raise RuntimeError(f"step {t.run.step}: the experience cache differs across ranks (digests {digests}); "
                           "refusing to checkpoint a diverged job")
    path, whole = None, {}
    if t.sharded:  # gather whole tensors (every rank takes part)
        whole = {"model_state": full_state_dict(t.model, unique=True),
                 "optimizer_state": full_optimizer_state(t.optimizer)}
    # every rank checks the same weights (whole ones under FSDP), so all of them refuse together
    _check_weights((whole.get("model_state") or t.model.state_dict()).items(),
                   f"step {t.run.step}: refusing to checkpoint to {t.out / 'checkpoints'}")
    if t.dist.is_main:
        extra = {**t.run.to_saved(), "config": t.cfg.to_dict()}
        path = save_checkpoint(t.out, t.run.step, t.model, t.optimizer, t.scheduler, t.cache, t.rng, extra, **whole)
    t.dist.barrier()
    return path


RESUME_SECTIONS = ("model", "data", "rollout", "objective", "truncation", "cache")


def resume_run(trainer) -> bool:
    """Restore a ``Trainer``'s weights, optimizer, scheduler, RNG, cache and run state (``trainer.run``, a
    ``rpo_train.runtime.run_state.RunState``) from the newest checkpoint of its ``out_dir``, if there is one.

    Refuses a checkpoint whose config differs in a section that shapes the run; a setting added since the checkpoint
    was written counts at its default, and a data section saved in the old flat form is read as its source's section
    (``rpo_train.config.RunConfig.saved_section``)."""
    t = trainer
    folder = latest_checkpoint(t.out)
    if folder is None:
        return False
    load = ((lambda m, o: load_full_state(t.model, t.optimizer, m, o)) if t.sharded else None)
    state, cache_file = load_checkpoint(folder, t.model, t.optimizer, t.scheduler, t.rng, load)
    cache = t.cache.load(cache_file)  # the trainer's cache type reads the saved one
    now = t.cfg.to_dict()
    for key in RESUME_SECTIONS:
        saved = t.cfg.saved_section(key, state["config"])
        if saved != now[key]:
            raise UsageError(f"cannot resume {folder}: config section {key!r} differs from the checkpoint's "
                             f"({saved} vs {now[key]}); use another out_dir or the checkpoint's settings")
    # the run's own choice of cache init, whatever steps says now (checkpoints from before it were eager or a file)
    t.cache = cache
    t.run = RunState.from_saved(state, len(cache), "file" if t.cfg.cache.init_path else "eager")
    return True

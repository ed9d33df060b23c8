"""``rpo-train``: the reference training script.

    rpo-train                                   the embedded default (recipe tiny-cpu) on a 2-core CPU
    rpo-train --recipe smollm2-135m-cpu         a bundled recipe by name
    rpo-train --recipe my.yaml steps=50 objective.beta=0.0 rollout.group_size=8
    torchrun --nproc_per_node=2 -m rpo_train.cli steps=20   data-parallel over 2 processes (gloo on a CPU)

Runs are resumed from ``out_dir`` when a checkpoint exists there. At the end a table of held-out accuracy before and
after, rollout tokens and the time split is printed and plots are written to ``out_dir``.

One run at a time per out_dir: a second one exits with status 2, naming the pid and host of the first. Ctrl-C or
SIGTERM stops at the next step boundary with a checkpoint there (exit 130 or 143; a second Ctrl-C stops at once); a
full disk stops the run with the file it could not write (exit 2). Run the same command again to resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from .config import load_recipe
from .guard import describe
from .runtime.errors import ArgumentParser, UsageError, WriteFailedError, add_debug_flag, report_usage_errors
from .runtime.interrupt import StopSignals


def resolve_model(cfg):
    """``builtin:NAME`` (``builtin:tiny-recurrence`` is the embedded default's) is a warm-started tiny model: the one
    shipped with the package for the bundled recipes' data, else built once and cached (``rpo_train.task.warmstart``).
    """
    if cfg.model.startswith("builtin:"):
        from .task.warmstart import ensure_warm_model

        return dataclasses.replace(cfg, model=str(ensure_warm_model(cfg.model.split(":", 1)[1], cfg.data)))
    return cfg


def _per_sample(summary: dict) -> str:
    """Tokens generated per sample in the training steps, and their share of a full-path sample's."""
    per = summary.get("tokens_per_sample", float("nan"))
    full = summary.get("full_path_tokens_per_sample")
    if not full:
        return f"{per:.1f}"
    return (f"{per:.1f} = {per / full:.1%} of the {full:.0f} tokens of a full-path sample (the cache init's mean "
            "response length)")


def _guard_rows(summary: dict) -> list[tuple[str, str]]:
    """An RPO run's refreshes (groups sent down the full path by the drift guard) and its final drift."""
    if "final_drift_m2_mean" not in summary:
        return []
    return [("cache refreshes (share of groups)", f"{summary.get('refreshes', 0)} "
                                                  f"({summary.get('refresh_share', 0.0):.1%})"),
            ("final drift of kept bodies (kl, m2)", f"{summary['final_drift_kl_mean']:.4f}, "
                                                    f"{summary['final_drift_m2_mean']:.4f}")]


def _signal_rows(summary: dict) -> list[tuple[str, str]]:
    """The last step with a learning signal (``rpo_train.health``): "none" when no group ever had one."""
    if "last_signal_step" not in summary:
        return []
    last = summary["last_signal_step"]
    return [("last step with a learning signal", "none" if last is None else str(last))]


def summary_table(summary: dict) -> str:
    rows = [("held-out accuracy before", f"{summary.get('accuracy_before', float('nan')):.3f}"),
            ("held-out accuracy after", f"{summary.get('accuracy_after', float('nan')):.3f}"),
            *[(f"held-out {name.replace('_at_', '@')} before -> after",
               f"{summary[name + '_before']:.3f} -> {summary[name + '_after']:.3f}")
              for name in ("pass_at_k", "mean_at_k") if name + "_after" in summary and name + "_before" in summary],
            ("rollout tokens generated", f"{summary.get('tokens_generated', 0):,}"),
            ("generated tokens / sample", _per_sample(summary)),
            ("steps", str(summary.get("steps", 0))),
            *_signal_rows(summary),
            *_guard_rows(summary),
            ("time: warm start (s)", f"{summary.get('warm_start_s', 0.0):.1f}"),
            ("time: cache init (s)", f"{summary.get('cache_init_s', 0.0):.1f}"),
            ("time: rollout (s)", f"{summary.get('rollout_s', 0.0):.1f}"),
            ("time: train (s)", f"{summary.get('train_s', 0.0):.1f}"),
            ("time: total (s)", f"{summary.get('total_s', 0.0):.1f}")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    """The ``rpo-train`` command; a configuration, data, model, checkpoint or machine problem is one line on
    stderr and exit status 2 (``--debug`` or RPO_DEBUG=1 shows the traceback)."""
    parser = ArgumentParser(prog="rpo-train", description="RPO (and GRPO/DAPO) fine-tuning",
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--recipe", default="tiny-cpu", help="bundled recipe name or a YAML file")
    parser.add_argument("overrides", nargs="*", help="key=value or section.key=value")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    return report_usage_errors("rpo-train", lambda: run(load_recipe(args.recipe, args.overrides), start=start),
                               debug=args.debug)


def _resume_hint(out_dir: str, first: str = "") -> str:
    """How to go on: the last complete checkpoint of ``out_dir`` and the command to resume from it."""
    from .runtime.checkpointing import latest_checkpoint

    folder = latest_checkpoint(out_dir)
    first = f"{first}, then run" if first else "run"
    if folder is None:
        return f"no checkpoint was written yet: {first} the same command again to start over"
    return f"the last complete checkpoint is {folder}: {first} the same command again to resume from it"


def _train(cfg, reward_fn, dist, stop: StopSignals) -> tuple[dict, float]:
    """(the trainer's summary, seconds spent finding or building the bundled model); transformers' own progress bars
    are off meanwhile (the warm start, if it is built, shows its own)."""
    from .task.warmstart import transformers_bars_off
    from .trainer import Trainer

    with transformers_bars_off():
        warm = time.perf_counter()
        if not dist.is_main:  # rank 0 builds the bundled model once; the others then find it cached
            dist.barrier()
        cfg = resolve_model(cfg)
        if dist.is_main:
            dist.barrier()
        warm_s = time.perf_counter() - warm
        trainer = Trainer(cfg, reward_fn=reward_fn, dist=dist, stop=stop.requested)
        if dist.is_main:
            init = f"; cache init {trainer.run.init_mode}" if cfg.objective.mode == "rpo" else ""
            print(f"rpo-train: {trainer.precision.header()}{init}; {describe(cfg)}", flush=True)
        return trainer.train(), warm_s


def run(cfg, *, reward_fn=None, start: float | None = None) -> int:
    """Train ``cfg`` in this process, as one rank of a torchrun job when its environment says so; the exit code.

    Rank 0 holds the lock of ``out_dir`` for the run (``rpo_train.runtime.run_lock``). Ctrl-C or SIGTERM (handled
    here, in the main thread, and the previous handlers restored after) stops at the next step boundary with a
    checkpoint there: exit code 130 or 143 (128 + the signal); a second signal stops at once, also 130 or 143. A
    file that cannot be written is a ``UsageError`` naming it and the last complete checkpoint. A lost rank (killed,
    network gone) ends the job with a message saying how to resume (exit code 1).
    """
    from .runtime.distributed import DistContext, RankLostError
    from .runtime.run_lock import hold_out_dir

    start = time.perf_counter() if start is None else start
    dist = DistContext.from_env(cfg.device)
    if dist.is_main:
        for note in cfg.notes():
            print(f"rpo-train: note: {note}", file=sys.stderr)
    stop = StopSignals(announce=dist.is_main)
    try:
        with stop.handling(), hold_out_dir(cfg.out_dir, dist) as held:
            if not held:
                return 2
            summary, warm_s = _train(cfg, reward_fn, dist, stop)
    except RankLostError as exc:
        print(f"rpo-train: {exc}. The job stops here; run the same command again to resume from the last "
              f"checkpoint in {cfg.out_dir}", file=sys.stderr)
        return 1
    except WriteFailedError as exc:
        raise UsageError(f"{exc}; {_resume_hint(cfg.out_dir, exc.remedy)}") from exc
    except KeyboardInterrupt:
        if dist.is_main:
            print(f"rpo-train: stopped at once by a second {stop.name()}; {_resume_hint(cfg.out_dir)}",
                  file=sys.stderr)
        return stop.exit_code()
    finally:
        dist.close()
    if "stopped_at" in summary:
        if dist.is_main:
            print(f"rpo-train: stopped by {stop.name()} at step {summary['stopped_at']} of {cfg.steps}; "
                  f"{_resume_hint(cfg.out_dir)}", file=sys.stderr)
        return stop.exit_code()
    if dist.is_main:
        summary.update(warm_start_s=summary.get("warm_start_s", warm_s), total_s=time.perf_counter() - start)
        print(summary_table(summary))
        print(f"metrics: {cfg.out_dir}/metrics.jsonl, plots: {cfg.out_dir}/plots.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

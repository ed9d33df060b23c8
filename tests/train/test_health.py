"""A run whose learning signal died says so: after ``health_window`` steps in a row in which every group's rewards
were equal, one warning on stderr and one in metrics.jsonl naming the likely causes, and the closing summary names
the last step with a signal; a healthy run does not warn."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from rpo_train import run_inputs
from rpo_train import trainer as trainer_module
from rpo_train.cli import main
from rpo_train.rewards import RewardResult
from rpo_train.task.tokenizer import make_tiny_checkpoint
from tests.helpers.train_configs import small_recipe


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    base = tmp_path_factory.mktemp("health")
    ckpt = make_tiny_checkpoint(base / "tiny", hidden=32, max_positions=96)
    path = base / "small.yaml"
    small_recipe(path, ckpt, eval_every=10, save_every=10)
    return path


def _reward(dead_after: int | None, monkeypatch):
    """Rewards alternating 0, 1 (every group has a signal: its samples are scored in turn) until step
    ``dead_after`` is done, then always 0."""
    calls, done = itertools.count(), {"steps": 0}
    real = trainer_module.Trainer.train_step

    def counting(self):
        out = real(self)
        done["steps"] += 1
        return out

    def reward(row, text):
        dead = dead_after is not None and done["steps"] >= dead_after
        return RewardResult(0.0 if dead else float(next(calls) % 2), False)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", counting)
    monkeypatch.setitem(run_inputs.REWARDS, "exact", reward)


def _run(recipe, out, capsys, *overrides):
    assert main(["--recipe", str(recipe), f"out_dir={out}", *overrides]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return capsys.readouterr(), rows, json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("dead_after,last", [(0, None), (1, 1)])
def test_a_run_without_signal_warns_once(recipe, tmp_path, monkeypatch, capsys, dead_after, last):
    _reward(dead_after, monkeypatch)
    captured, rows, summary = _run(recipe, tmp_path / "out", capsys, "steps=5", "health_window=2")
    warnings = [line for line in captured.err.splitlines() if "no learning signal" in line]
    assert len(warnings) == 1, captured.err[-3000:]
    assert all(cause in warnings[0] for cause in ("learning rate too high", "always returns the same value",
                                                  "too hard or too easy")), warnings[0]
    warned = [r["step"] for r in rows if "health/no_signal_warning" in r]
    assert warned == [dead_after + 2]
    assert [r.get("health/no_signal_steps") for r in rows[1:]] == [float(max(0, s - dead_after)) for s in range(1, 6)]
    assert summary["last_signal_step"] == last
    assert re.search(rf"^last step with a learning signal +{'none' if last is None else last}$", captured.out, re.M)


def test_a_healthy_run_does_not_warn(recipe, tmp_path, monkeypatch, capsys):
    _reward(None, monkeypatch)
    captured, rows, summary = _run(recipe, tmp_path / "out", capsys, "steps=3", "health_window=1")
    assert "no learning signal" not in captured.err
    assert not any("health/no_signal_warning" in r for r in rows)
    assert summary["last_signal_step"] == 3


def test_health_window_zero_turns_the_warning_off(recipe, tmp_path, monkeypatch, capsys):
    _reward(0, monkeypatch)
    captured, rows, summary = _run(recipe, tmp_path / "out", capsys, "steps=2", "health_window=0")
    assert "no learning signal" not in captured.err and summary["last_signal_step"] is None
    assert rows[-1]["health/no_signal_steps"] == 2.0

"""pass@k and mean@k (``rpo_train.evaluation``): the estimator against hand-computed cases, and a run that reports
them beside greedy accuracy."""

from __future__ import annotations

import json

import pytest

from rpo_train.evaluation import pass_at_k


def test_pass_at_k_against_hand_computed_cases():
    assert pass_at_k(8, 0, 8) == 0.0 and pass_at_k(8, 1, 8) == 1.0  # k = n: solved at least once
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)  # k = 1: the sampled accuracy
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3)/C(5,3)
    assert pass_at_k(5, 3, 3) == 1.0  # fewer than k wrong: any k samples hold a right one
    with pytest.raises(ValueError, match="0 < k <= n"):
        pass_at_k(2, 1, 3)


def test_a_run_reports_pass_and_mean_at_k(tmp_path):
    from rpo_train.task.tokenizer import make_tiny_checkpoint
    from rpo_train.trainer import Trainer
    from tests.helpers.train_configs import config

    ckpt = make_tiny_checkpoint(tmp_path / "model", hidden=32, max_positions=96)
    trainer = Trainer(config(ckpt, tmp_path / "run", steps=1, eval_samples=4))
    summary = trainer.train()
    for name in ("pass_at_k", "mean_at_k"):
        assert 0.0 <= summary[f"{name}_before"] <= 1.0 and 0.0 <= summary[f"{name}_after"] <= 1.0
    assert summary["mean_at_k_after"] <= summary["pass_at_k_after"]  # solved once at least >= the mean share
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "eval/pass_at_k" in rows[0] and "eval/pass_at_k" in rows[-1]
    assert Trainer(config(ckpt, tmp_path / "greedy", steps=1)).evaluations(0).keys() == {"eval/accuracy"}

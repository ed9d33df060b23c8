"""Rewards (correctness, format, length-aware and overlong shaping) and group statistics."""

from __future__ import annotations

import math

import pytest
import torch

from rpo_train.objectives import ObjectiveConfig, group_advantages
from rpo_train.rewards import exact_answer_reward, format_reward, length_aware, math_verify_reward, overlong_penalty


def test_length_aware_values():
    rewards, correct, lengths = [1.0, 1.0, 0.0, 1.0], [True, True, False, True], [100, 300, 200, 200]
    shaped = length_aware(rewards, correct, lengths, alpha=0.01)  # l_ref = 200
    assert shaped[0] == pytest.approx(1.0 / (1.0 + math.exp(-1.0)))  # shorter than the mean: ~0.731
    assert shaped[1] == 0.5  # longer: 0.269 clipped up to 0.5
    assert shaped[2] == 0.0  # wrong responses keep their reward
    assert shaped[3] == pytest.approx(0.5)  # at the mean: exactly 1/2
    assert length_aware([1.0], [True], [10]) == [0.5]
    with pytest.raises(ValueError, match="equal, non-empty"):
        length_aware([1.0], [True, False], [1])


def test_overlong_penalty_is_linear_in_the_buffer():
    assert overlong_penalty(100, 200, 50) == 0.0
    assert overlong_penalty(150, 200, 50) == 0.0
    assert overlong_penalty(175, 200, 50) == pytest.approx(-0.5)
    assert overlong_penalty(200, 200, 50) == pytest.approx(-1.0)
    assert overlong_penalty(260, 200, 50, factor=2.0) == -2.0
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(10, 100, 200)


def test_correctness_rewards():
    row = {"answer": "42"}
    assert exact_answer_reward(row, "step 1\nstep 2\nAnswer: 42").correct
    assert not exact_answer_reward(row, "Answer: 41").correct
    assert not exact_answer_reward(row, "42").correct
    assert math_verify_reward({"answer": "\\frac{1}{2}"}, "so the result is \\boxed{0.5}").correct
    assert not math_verify_reward({"answer": "3"}, "\\boxed{4}").correct
    assert format_reward(row, "Answer: 7").reward == 0.1 and format_reward(row, "nothing").reward == 0.0
    with pytest.raises(ValueError, match="no 'answer'"):
        exact_answer_reward({"question": "x"}, "Answer: 1")


def test_group_advantages():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    a = group_advantages(r)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()
    assert torch.allclose(a[0], (r[0] - 0.5) / (std + 1e-4))
    assert torch.equal(a[1], torch.zeros(4))  # zero-variance group: no signal, no NaN
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.ones(3, 1))
    with pytest.raises(ValueError, match=r"group\(s\) \[1\]"):
        group_advantages(torch.tensor([[1.0, 0.0], [float("nan"), 1.0]]))


def test_objective_presets_and_validation():
    grpo, dapo = ObjectiveConfig.preset("grpo"), ObjectiveConfig.preset("dapo")
    assert (grpo.eps_high, grpo.beta, grpo.loss_type, grpo.dynamic_sampling) == (0.2, 0.04, "grpo", False)
    assert (dapo.eps_high, dapo.beta, dapo.loss_type, dapo.dynamic_sampling) == (0.28, 0.0, "dapo", True)
    assert ObjectiveConfig.preset("dapo", mode="full").mode == "full"
    with pytest.raises(ValueError, match="unknown objective key"):
        ObjectiveConfig.preset("grpo", epsilon=0.1)
    with pytest.raises(ValueError, match="objective.loss_tokens"):
        ObjectiveConfig(loss_tokens="prefix")
    with pytest.raises(ValueError, match="objective.mu"):
        ObjectiveConfig(mu=0)
    with pytest.raises(ValueError, match="objective.algorithm"):
        ObjectiveConfig.preset("ppo")

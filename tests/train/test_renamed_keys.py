"""Keys renamed since (``rpo_train.objectives.RENAMED``: ``objective.rollout`` is now ``objective.mode``): recipes,
overrides and checkpoints written with the old name keep their meaning; both names at once is an error."""

from __future__ import annotations

import json

import pytest

from rpo_train.config import RunConfig, load_recipe
from rpo_train.objectives import renamed_keys
from rpo_train.runtime.errors import UsageError
from rpo_train.task.tokenizer import make_tiny_checkpoint
from tests.helpers.train_configs import config, latest_state_file, ones_reward

NOTE = "note: objective.rollout is now objective.mode"


def test_an_old_key_in_an_override_or_a_recipe_is_read_as_the_new_one(tmp_path, capsys):
    cfg = load_recipe("tiny-cpu", ["objective.rollout=full"])  # the recipe says mode: rpo; the override wins
    assert cfg.objective.mode == "full"
    assert capsys.readouterr().err.splitlines() == [NOTE + " (same values); rename it in the recipe or override"]
    recipe = tmp_path / "old.yaml"
    recipe.write_text("model: m\nobjective: {algorithm: dapo, rollout: full}\n")
    assert load_recipe(str(recipe)).objective.mode == "full"
    assert load_recipe(str(recipe), ["objective.mode=rpo"]).objective.mode == "rpo"
    assert load_recipe(str(recipe), ["objective.rollout=rpo"]).objective.mode == "rpo"
    assert [line.startswith(NOTE) for line in capsys.readouterr().err.splitlines()] == [True] * 3  # one per load
    assert load_recipe("tiny-cpu", ["objective.mode=full"]).objective.mode == "full"
    assert capsys.readouterr().err == ""


def test_both_names_at_once_are_an_error_naming_both(tmp_path):
    both = r"objective.rollout and objective.mode are both given"
    with pytest.raises(UsageError, match=both):
        load_recipe("tiny-cpu", ["objective.rollout=full", "objective.mode=full"])
    recipe = tmp_path / "both.yaml"
    recipe.write_text("model: m\nobjective: {rollout: full, mode: rpo}\n")
    with pytest.raises(UsageError, match=both):
        load_recipe(str(recipe))
    with pytest.raises(UsageError, match=both):
        renamed_keys({"rollout": "rpo", "mode": "rpo"})


def test_a_saved_objective_section_with_the_old_key_reads_as_this_versions():
    now = RunConfig(model="m").to_dict()
    old = {k: v for k, v in now["objective"].items() if k != "mode"} | {"rollout": "rpo"}
    assert RunConfig(model="m").saved_section("objective", {"objective": old}) == now["objective"]
    changed = RunConfig(model="m").saved_section("objective", {"objective": old | {"rollout": "full"}})
    assert changed == now["objective"] | {"mode": "full"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", hidden=32, max_positions=96)


def test_a_checkpoint_saved_with_objective_rollout_resumes_and_a_changed_mode_does_not(checkpoint, tmp_path):
    from rpo_train.trainer import Trainer

    cfg = config(checkpoint, tmp_path, steps=1, save_every=1)
    first = Trainer(cfg, reward_fn=ones_reward)
    first.train()
    state_path = latest_state_file(tmp_path)
    state = json.loads(state_path.read_text())
    saved = state["config"]["objective"]
    saved["rollout"] = saved.pop("mode")  # as the config was saved before the rename
    state_path.write_text(json.dumps(state))
    resumed = Trainer(cfg, reward_fn=ones_reward)
    assert resumed.resume() and resumed.run.step == 1 and resumed.cache.digest() == first.cache.digest()
    saved["rollout"] = "full"  # that run was the full-path baseline: not this one
    state_path.write_text(json.dumps(state))
    with pytest.raises(UsageError, match="config section 'objective' differs"):
        Trainer(cfg, reward_fn=ones_reward).resume()

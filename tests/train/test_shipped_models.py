"""The warm-started tiny models ship with the package: the bundled recipes resolve to them with no build, they load
and start at the held-out accuracy the docs give, another data config is still built on demand (with a progress bar
and without transformers' own bars), and a shipped model's recorded settings rebuild it (slow)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rpo_train.cli import resolve_model
from rpo_train.config import load_recipe
from rpo_train.data.config import BundledData
from rpo_train.task import warmstart

RECIPES = ("tiny-cpu", "tiny-cpu-sum", "tiny-cpu-addition")
MAX_MODEL_BYTES = 400_000


@pytest.fixture
def no_build(monkeypatch, tmp_path):
    """An empty cache and a builder that fails if called."""
    def refuse(*args, **kwargs):
        raise AssertionError("a shipped model was built instead of found")

    monkeypatch.setenv("RPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(warmstart, "train_warm_start", refuse)
    monkeypatch.setattr(warmstart, "build_warm_model", refuse)


def start_accuracy(recipe: str, model: Path, out: Path) -> float:
    """Held-out greedy accuracy of ``model`` on ``recipe``'s test split, through the trainer's own evaluation."""
    from rpo_train.trainer import Trainer

    cfg = dataclasses.replace(load_recipe(recipe, [f"out_dir={out}"]), model=str(model))
    return Trainer(cfg).evaluate()


@pytest.mark.parametrize("recipe", RECIPES)
def test_bundled_recipes_resolve_to_shipped_models_without_a_build(recipe, no_build):
    cfg = load_recipe(recipe)
    folder = Path(resolve_model(cfg).model)
    name, data = cfg.model.split(":", 1)[1], cfg.data
    assert folder == warmstart.shipped_root() / warmstart.warm_start_spec(name, data)[0]
    record = json.loads((folder / "warm_start.json").read_text())
    assert record["builtin"] == name and record["folder"] == folder.name
    assert BundledData(**record["data"]) == data  # the recipe's data config, exactly
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json", "warm_start.json"]  # safetensors only, no pickle
    assert (folder / "model.safetensors").stat().st_size < MAX_MODEL_BYTES


def test_default_model_loads_and_starts_at_the_documented_accuracy(no_build, tmp_path):
    """docs/training.md: greedy held-out accuracy of the default's warm start is 10.5% (21 of 200)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(resolve_model(load_recipe("tiny-cpu")).model)
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    assert model.config.vocab_size >= len(tok) and tok.eos_token == "<eos>"
    assert start_accuracy("tiny-cpu", folder, tmp_path / "run") == pytest.approx(0.105)


def test_another_data_config_is_built_on_demand_with_a_progress_bar(monkeypatch, tmp_path, capsys):
    name = "tiny-recurrence"
    monkeypatch.setenv("RPO_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(warmstart.WARM_STARTS, name, dataclasses.replace(warmstart.WARM_STARTS[name], steps=3))
    data = BundledData(task="recurrence", n_train=40, n_test=5, seed=7)  # another generator (sizes alone are not)
    folder = warmstart.ensure_warm_model(name, data)
    assert folder.parent == tmp_path and folder.name == warmstart.warm_start_spec(name, data)[0]
    err = capsys.readouterr().err
    assert "no shipped model" in err and "warm start (recurrence)" in err and "3/3" in err
    assert "Loading weights" not in err and "Writing model shards" not in err
    record = json.loads((folder / "warm_start.json").read_text())
    assert record["data"] == {"task": "recurrence", "terms": 17, "n_train": 400, "n_test": 200, "seed": 7}
    assert "build_warm_model('tiny-recurrence', BundledData(task='recurrence', terms=17" in record["rebuild"]
    assert warmstart.ensure_warm_model(name, data) == folder  # cached: found, not built again
    assert "no shipped model" not in capsys.readouterr().err


def test_transformers_bars_are_restored_after_the_block():
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    with warmstart.transformers_bars_off():
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled() == was_on


@pytest.mark.slow
def test_the_recorded_call_rebuilds_the_default_model(tmp_path):
    """The shipped default's ``rebuild`` call, run as recorded (a few minutes on 2 cores), makes a model that starts
    within 2 points of the shipped one's held-out accuracy."""
    shipped = warmstart.shipped_root() / warmstart.warm_start_spec("tiny-recurrence", load_recipe("tiny-cpu").data)[0]
    record = json.loads((shipped / "warm_start.json").read_text())
    subprocess.run([sys.executable, "-c", record["rebuild"]], cwd=tmp_path, check=True, timeout=3600)
    rebuilt = tmp_path / shipped.name
    assert json.loads((rebuilt / "warm_start.json").read_text())["data"] == record["data"]
    before = start_accuracy("tiny-cpu", shipped, tmp_path / "run-shipped")
    after = start_accuracy("tiny-cpu", rebuilt, tmp_path / "run-rebuilt")
    assert abs(after - before) <= 0.02, (before, after)

"""NaN and inf meet a clear stop: weights of a model folder or a checkpoint (one line naming the tensor and the file,
exit 2), logits in the sampler (an error naming the decode step and the engine, never an out-of-range token), a
training step's loss or gradient norm (the update skipped and counted; ``optim.max_nonfinite_steps`` in a row stop the
run with one line), a checkpoint of NaN weights (refused) and a reward function returning NaN (one line, exit 2)."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from rpo_train import run_inputs
from rpo_train import trainer as trainer_module
from rpo_train.cli import main
from rpo_train.rewards import RewardResult
from rpo_train.rollout import NativeEngine
from rpo_train.rollout.params import SamplingParams
from rpo_train.runtime.finite import NonFiniteError
from rpo_train.task.tokenizer import make_tiny_checkpoint
from tests.helpers.train_configs import small_recipe

TENSOR = "model.layers.0.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, the smallest recipe on it, and a finished 1-step run (with its checkpoint) of that recipe."""
    base = tmp_path_factory.mktemp("nonfinite")
    ckpt = make_tiny_checkpoint(base / "tiny", hidden=32, max_positions=96)
    recipe = base / "small.yaml"
    small_recipe(recipe, ckpt, out_dir=base / "run", steps=1, eval_every=1, save_every=1)
    assert main(["--recipe", str(recipe)]) == 0
    return {"ckpt": ckpt, "recipe": recipe, "run": base / "run"}


def _alternating():
    """A reward with a learning signal in every group: calls alternate 0, 1 (a group's samples are scored in turn)."""
    calls = itertools.count()
    return lambda row, text: RewardResult(float(next(calls) % 2), False)


def _poison(path, name=TENSOR):
    tensors = load_file(str(path))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[3] = float("nan")
    save_file(tensors, str(path), metadata={"format": "pt"})


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("rpo-train:")]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]) and "Traceback" not in err, err[-3000:]
    return lines[0]


def test_nan_weights_in_a_model_folder_stop_with_the_tensor_and_file_named(world, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(world["ckpt"], folder)
    _poison(folder / "model.safetensors")
    assert main(["--recipe", str(world["recipe"]), f"model={folder}", f"out_dir={tmp_path / 'out'}"]) == 2
    line = _one_line(capsys)
    assert TENSOR in line and str(folder / "model.safetensors") in line and "NaN or inf" in line, line


def test_nan_weights_in_a_checkpoint_stop_the_resume(world, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(world["run"], out)
    step = out / "checkpoints" / json.loads((out / "checkpoints" / "latest.json").read_text())["dir"]
    _poison(step / "model.safetensors")
    assert main(["--recipe", str(world["recipe"]), f"out_dir={out}"]) == 2
    line = _one_line(capsys)
    assert TENSOR in line and str(step / "model.safetensors") in line, line


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_nan_logits_in_the_sampler_name_the_decode_step(world, temperature):
    engine = NativeEngine.from_pretrained(world["ckpt"])
    assert engine.generate([[1, 2, 3]], n=2, params=SamplingParams(4, temperature, seed=0))  # finite: samples
    engine.load_state_dict({"model.norm.weight": torch.full_like(engine.model.hf.model.norm.weight, float("nan"))},
                           strict=False)
    with pytest.raises(NonFiniteError, match=r"native engine, decode step \d+: the logits of 2 of 2 sequences"):
        engine.generate([[1, 2, 3]], n=2, params=SamplingParams(4, temperature, seed=0))


def _nan_loss(monkeypatch, when=lambda: True):
    real = trainer_module.forward_loss

    def nan_loss(*args, **kw):
        loss, metrics = real(*args, **kw)
        return (loss * float("nan") if when() else loss), metrics

    monkeypatch.setattr(trainer_module, "forward_loss", nan_loss)


def test_a_non_finite_loss_skips_the_update_and_is_counted(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(run_inputs.REWARDS, "exact", _alternating())
    step = {"n": 0}
    real_step = trainer_module.Trainer.train_step

    def counting(self):
        step["n"] += 1
        return real_step(self)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", counting)
    _nan_loss(monkeypatch, when=lambda: step["n"] == 1)  # step 1 only
    out = tmp_path / "out"
    assert main(["--recipe", str(world["recipe"]), f"out_dir={out}", "steps=2", "optim.max_nonfinite_steps=2"]) == 0
    err = capsys.readouterr().err
    assert err.count("update is skipped") == 1 and "step 1: loss nan" in err, err[-2000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("train/skipped_nonfinite") for r in rows] == [None, 1.0, 0.0]


def test_the_skipped_update_leaves_the_weights_alone(world, tmp_path, monkeypatch):
    from tests.helpers.train_configs import config

    _nan_loss(monkeypatch)
    cfg = config(world["ckpt"], tmp_path / "out", steps=1, batch_questions=2)
    trainer = trainer_module.Trainer(cfg, reward_fn=_alternating())
    trainer.init_cache()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    metrics = trainer.train_step()
    assert metrics["train/skipped_nonfinite"] == 1.0 and trainer.nonfinite.streak == 1
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert all(torch.isfinite(s).all() for st in trainer.optimizer.state.values() for s in st.values())


def test_max_nonfinite_steps_in_a_row_stop_the_run_with_one_line(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(run_inputs.REWARDS, "exact", _alternating())
    _nan_loss(monkeypatch)
    argv = ["--recipe", str(world["recipe"]), f"out_dir={tmp_path / 'out'}", "steps=3", "optim.max_nonfinite_steps=2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    last = err.rstrip().splitlines()[-1]
    assert last.startswith("rpo-train: step 2: the loss or gradient norm was NaN or inf in 2 steps in a row"), err
    assert "optim.lr" in last and "Traceback" not in err
    assert json.loads((tmp_path / "out" / "checkpoints" / "latest.json").read_text())["step"] == 1  # finite


def test_max_nonfinite_steps_is_validated(world, tmp_path, capsys):
    argv = ["--recipe", str(world["recipe"]), f"out_dir={tmp_path / 'out'}", "optim.max_nonfinite_steps=0"]
    assert main(argv) == 2
    assert "optim.max_nonfinite_steps must be an int >= 1" in _one_line(capsys)


def test_no_checkpoint_holds_nan_weights(world, tmp_path):
    from tests.helpers.train_configs import config

    trainer = trainer_module.Trainer(config(world["ckpt"], tmp_path / "out", steps=1), reward_fn=_alternating())
    with torch.no_grad():
        dict(trainer.model.named_parameters())[TENSOR].view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteError, match=f"refusing to checkpoint.*{TENSOR}"):
        trainer.save()
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_a_nan_reward_is_one_line_and_exit_2(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(run_inputs.REWARDS, "exact", lambda row, text: RewardResult(float("nan"), False))
    assert main(["--recipe", str(world["recipe"]), f"out_dir={tmp_path / 'out'}"]) == 2
    line = _one_line(capsys)
    assert "the reward function returned nan" in line and "question" in line, line

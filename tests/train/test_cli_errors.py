"""Every mistake a user can make in a recipe, an override, a data file, a model folder, a checkpoint or the machine
ends ``rpo-train`` with one line ``rpo-train: <what is wrong>`` on stderr naming the culprit, exit status 2, and no
traceback; ``--debug`` / RPO_DEBUG=1 show the traceback; a bug still raises."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rpo_train.cli import main
from rpo_train.runtime.errors import UsageError
from rpo_train.task.tokenizer import make_tiny_checkpoint
from tests.helpers.train_configs import small_recipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, a small recipe using it, and a finished 1-step run (with its checkpoint) of that recipe."""
    base = tmp_path_factory.mktemp("cli")
    ckpt = make_tiny_checkpoint(base / "tiny", hidden=32, max_positions=96)
    recipe = base / "small.yaml"
    small_recipe(recipe, ckpt, out_dir=base / "run", steps=1, eval_every=1, save_every=1)
    assert main(["--recipe", str(recipe)]) == 0
    return {"base": base, "ckpt": ckpt, "recipe": recipe, "run": base / "run"}


def _file(tmp, name, text):
    path = tmp / name
    path.write_text(text)
    return path


def _jsonl(tmp, *lines):
    return ["data.task=hf", f"data.path={_file(tmp, 'd.jsonl', chr(10).join(lines) + chr(10))}"]


def _copy_model(world, tmp, damage):
    folder = tmp / "model"
    shutil.copytree(world["ckpt"], folder)
    damage(folder)
    return folder


def _copy_run(world, tmp, damage):
    out = tmp / "run"
    shutil.copytree(world["run"], out)
    damage(out / "checkpoints")
    return out


def _run_with(world, tmp, damage):
    return [f"out_dir={_copy_run(world, tmp, damage)}"]


def _step_dir(checkpoints: Path) -> Path:
    return checkpoints / json.loads((checkpoints / "latest.json").read_text())["dir"]


# (case id, function (world, tmp) -> argv after --recipe <small recipe> [or a full argv], text the line must hold)
CASES = [
    ("yaml-syntax", lambda w, t: ["--recipe", str(_file(t, "bad.yaml", "steps: [1, 2\n"))], "not valid YAML"),
    ("recipe-is-a-list", lambda w, t: ["--recipe", str(_file(t, "list.yaml", "- steps\n- 3\n"))],
     "expected a mapping"),
    ("recipe-missing", lambda w, t: ["--recipe", "no-such-recipe"], "recipe 'no-such-recipe' not found"),
    ("unknown-key", lambda w, t: ["stepz=3"], "unknown key(s) ['stepz']"),
    ("lr-not-a-number", lambda w, t: ["optim.lr=abc"], "optim.lr must be a number, got 'abc'"),
    ("steps-zero", lambda w, t: ["steps=0"], "steps must be an int >= 1"),
    ("steps-fractional", lambda w, t: ["steps=1.5"], "steps must be an int, got 1.5"),
    ("flag-not-bool", lambda w, t: ["optim.gradient_checkpointing=maybe"], "optim.gradient_checkpointing must be"),
    ("group-size-one", lambda w, t: ["rollout.group_size=1"], "rollout.group_size"),
    ("override-without-equals", lambda w, t: ["steps"], "must look like key=value"),
    ("override-into-a-value", lambda w, t: ["steps.x=1"], "'steps' is not a section"),
    ("section-not-a-mapping", lambda w, t: ["--recipe", str(_file(t, "s.yaml", "model: m\noptim: 3\n"))],
     "optim must be a mapping"),
    ("dtype", lambda w, t: ["dtype=int8"], "dtype must be one of"),
    ("algorithm", lambda w, t: ["objective.algorithm=ppo"], "objective.algorithm must be one of"),
    ("truncation-mode", lambda w, t: ["truncation.mode=sometimes"], "truncation.mode must be one of"),
    ("digits", lambda w, t: ["data.digits=0"], "data.digits must be in [1, 12]"),
    ("device-unknown", lambda w, t: ["device=tpu"], "device must be cpu, cuda or cuda:N"),
    ("device-absent", lambda w, t: ["device=cuda:99"], "device=cuda:99"),
    ("out-dir-is-a-file", lambda w, t: [f"out_dir={_file(t, 'taken', 'x')}/run"], "is a file; out_dir must be"),
    ("model-missing", lambda w, t: [f"model={t / 'nowhere'}"], "does not exist"),
    ("model-is-a-file", lambda w, t: [f"model={_file(t, 'weights.bin', 'x')}"], "is not a directory"),
    ("model-no-weights", lambda w, t: [f"model={_copy_model(w, t, lambda f: (f / 'model.safetensors').unlink())}"],
     "has no weights"),
    ("model-bad-config", lambda w, t: [f"model={_copy_model(w, t, lambda f: (f / 'config.json').write_text('{x'))}"],
     "cannot be loaded"),
    ("model-builtin-unknown", lambda w, t: ["model=builtin:huge"], "unknown builtin model"),
    ("task-renamed", lambda w, t: ["data.task=jsonl"], "data.task 'jsonl' is now 'hf'"),
    ("files-without-path", lambda w, t: ["data.task=hf"], "data.path is required"),
    ("data-file-missing", lambda w, t: ["data.task=hf", f"data.path={t / 'none.jsonl'}"], "no such file"),
    ("data-unknown-format", lambda w, t: ["data.task=hf", f"data.path={_file(t, 'd.txt', 'x')}"],
     "expected .json, .jsonl, .csv or .parquet files"),
    ("data-bad-json", lambda w, t: _jsonl(t, json.dumps({"question": "1+1", "answer": "2"}), "{oops"),
     "d.jsonl:2: not valid JSON"),
    ("data-missing-field", lambda w, t: _jsonl(t, json.dumps({"q": "1+1", "answer": "2"})),
     "d.jsonl: row 1 has no field 'question' (data.prompt_field)"),
    ("data-not-an-object", lambda w, t: _jsonl(t, "[1, 2]"), "d.jsonl: row 1 has no field 'question'"),
    ("data-empty", lambda w, t: _jsonl(t, ""), "no rows (the file is empty)"),
    ("prompt-too-long", lambda w, t: ["rollout.max_response_len=95"], "exceed the model's 96 positions"),
    ("cache-init-missing", lambda w, t: [f"cache.init_path={t / 'cache.safetensors'}"],
     "experience cache file not found"),
    ("checkpoint-pointer-damaged", lambda w, t: _run_with(w, t, lambda c: (c / "latest.json").write_text("{")),
     "latest.json is damaged"),
    ("checkpoint-folder-missing", lambda w, t: _run_with(w, t, lambda c: shutil.rmtree(_step_dir(c))),
     "which is missing or incomplete"),
    ("checkpoint-foreign", lambda w, t: _run_with(w, t, lambda c: (_step_dir(c) / "state.json").write_text(
        json.dumps({"format": "other/1"}))), "is not an rpo checkpoint"),
    ("checkpoint-weights-truncated", lambda w, t: _run_with(
        w, t, lambda c: (_step_dir(c) / "model.safetensors").write_bytes(b"xx")),
     "model.safetensors does not fit the model or cannot be read"),
    ("checkpoint-other-settings", lambda w, t: _run_with(w, t, lambda c: None) + ["steps=2", "rollout.group_size=3"],
     "cannot resume"),
]


@pytest.mark.parametrize("make_argv,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(world, tmp_path, capsys, make_argv, expected):
    argv = make_argv(world, tmp_path)
    if "--recipe" not in argv:
        argv = ["--recipe", str(world["recipe"]), *argv]
    if not any(a.startswith("out_dir=") for a in argv):  # never the finished run of the fixture
        argv.append(f"out_dir={tmp_path / 'out'}")
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("rpo-train:")]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err[-3000:]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err


def test_the_damaged_checkpoint_is_left_in_place(world, tmp_path, capsys):
    out = _copy_run(world, tmp_path, lambda c: (c / "latest.json").write_text("{"))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(["--recipe", str(world["recipe"]), f"out_dir={out}"]) == 2
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / "checkpoints" / "latest.json").read_text() == "{"


def test_debug_shows_the_traceback(world, monkeypatch):
    with pytest.raises(UsageError, match="optim.lr"):
        main(["--recipe", str(world["recipe"]), "--debug", "optim.lr=abc"])
    monkeypatch.setenv("RPO_DEBUG", "1")
    with pytest.raises(UsageError, match="optim.lr"):
        main(["--recipe", str(world["recipe"]), "optim.lr=abc"])


def test_a_bug_still_raises(world, tmp_path, monkeypatch):
    from rpo_train.trainer import Trainer

    def broken(self):
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(Trainer, "train", broken)
    with pytest.raises(RuntimeError, match="an internal bug"):
        main(["--recipe", str(world["recipe"]), f"out_dir={tmp_path / 'x'}"])


@pytest.mark.parametrize("argv,expected", [(["optim.lr=abc"], "optim.lr must be a number"),
                                           (["--frobnicate"], "unrecognized arguments: --frobnicate")])
def test_the_command_prints_exactly_one_line(argv, expected):
    res = subprocess.run([sys.executable, "-m", "rpo_train.cli", *argv], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("rpo-train: ") and expected in res.stderr, res.stderr

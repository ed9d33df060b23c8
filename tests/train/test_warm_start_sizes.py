"""The shipped warm model serves every data size (issue #34): a warm start is keyed by what generates its questions,
never by the run's ``data.n_train`` / ``data.n_test``, so smaller or larger runs of the bundled recipe reuse the
shipped model without a build; its questions stay out of every run's test split; and a size the task cannot serve is
one line naming the field, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpo_train.cli import main, resolve_model
from rpo_train.config import load_recipe
from rpo_train.data.config import BundledData
from rpo_train.task import make_task, warmstart

# the smallest run of the embedded default: 1 step of 2 questions x G = 2, short responses
TINY_RUN = ["steps=1", "batch_questions=2", "rollout.group_size=2", "rollout.max_response_len=24",
            "eval_max_new_tokens=8", "truncation.max_cut=4"]


@pytest.fixture
def no_build(monkeypatch, tmp_path):
    """An empty cache and a warm-start fit (and build) that fail if called."""
    def refuse(*args, **kwargs):
        raise AssertionError("the warm start was retrained instead of the shipped model reused")

    monkeypatch.setenv("RPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(warmstart, "_fit", refuse)
    monkeypatch.setattr(warmstart, "build_warm_model", refuse)


@pytest.mark.parametrize("sizes", [["data.n_test=2"], ["data.n_train=4"], ["data.n_train=700", "data.n_test=300"]])
def test_other_sizes_run_on_the_shipped_model(sizes, no_build, tmp_path, capsys):
    shipped = Path(resolve_model(load_recipe("tiny-cpu")).model)
    assert shipped.parent == warmstart.shipped_root()
    assert Path(resolve_model(load_recipe("tiny-cpu", sizes)).model) == shipped
    out = tmp_path / "run"
    assert main([f"out_dir={out}", *TINY_RUN, *sizes]) == 0
    assert (out / "metrics.jsonl").is_file()
    assert "no shipped model" not in capsys.readouterr().err


def test_the_key_follows_the_generator_not_the_sizes():
    def key(**kw):
        return warmstart.warm_start_spec("tiny-recurrence", BundledData(**kw))[0]

    default = key()
    assert default == "tiny-recurrence-666ff87ece2a"  # the shipped folder's name, unchanged
    assert key(n_train=4) == key(n_test=2) == key(n_train=999, n_test=1) == default
    assert len({default, key(seed=7), key(terms=18)}) == 3
    # the warm start learns the default train split, whatever the run's sizes
    _, _, task = warmstart.warm_start_spec("tiny-recurrence", BundledData(n_train=4, n_test=2))
    assert task.splits()[0] == make_task(BundledData()).splits()[0]


@pytest.mark.parametrize("task,default", [("recurrence", 400), ("addition", 2000)])
def test_no_test_split_holds_the_warm_start_questions(task, default):
    warm = {r["question"] for r in make_task(BundledData(task=task, n_train=default, n_test=200)).splits()[0]}
    full_test = make_task(BundledData(task=task, n_train=default, n_test=200)).splits()[1]
    for n_train, n_test in [(4, 200), (default - 1, 50), (default + 100, 100), (1, 600)]:
        train, test = make_task(BundledData(task=task, n_train=n_train, n_test=n_test)).splits()
        assert len(train) == n_train and len(test) == n_test
        assert not {r["question"] for r in test} & (warm | {r["question"] for r in train})
        if n_train <= default and n_test <= 200:
            assert test == full_test[:n_test]  # the same test questions for every train size up to the default


@pytest.mark.parametrize("args,expected", [
    (["data.n_train=0"], "data.n_train must be >= 1, got 0"),
    (["data.n_test=-3"], "data.n_test must be >= 1, got -3"),
    (["data.n_train=1000"], "data.n_train must be at most 999"),
    (["data.n_train=900", "data.n_test=200"], "data.n_test must be at most 100 with data.n_train=900"),
    (["data.n_train=4", "data.n_test=650"], "data.n_test must be at most 600 with model=builtin:tiny-recurrence"),
    (["model=builtin:tiny-addition", "data.task=addition", "data.digits=1", "data.n_train=10", "data.n_test=5"],
     "data.digits=1 gives 40 distinct questions"),
])
def test_a_size_the_task_cannot_serve_is_one_line_and_exit_2(args, expected, no_build, tmp_path, capsys):
    assert main([f"out_dir={tmp_path / 'out'}", *args]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("rpo-train:")]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]) and expected in lines[0], err[-3000:]
    assert "Traceback" not in err

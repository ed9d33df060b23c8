"""The recurrence task: seeded disjoint splits, answers that follow the recurrence, worked solutions of the promised
shape (>= 150 tokens, the closing <= 15% of them, decided there), a verifier that tells them apart, and a warm start
keyed apart from the addition task's."""

from __future__ import annotations

import pytest

from rpo_train.data.config import BundledData
from rpo_train.rewards import exact_answer_reward
from rpo_train.runtime.errors import UsageError
from rpo_train.task import make_task
from rpo_train.task.recurrence import RecurrenceTask
from tests.helpers.task_oracle import fib_mod10


def test_splits_are_seeded_disjoint_and_answered():
    task = RecurrenceTask(n_train=300, n_test=100, seed=7)
    train, test = task.splits()
    assert (train, test) == task.splits() and train != RecurrenceTask(n_train=300, n_test=100, seed=8).splits()[0]
    assert len(train) == 300 and len(test) == 100
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    for row in train[:50] + test[:50]:
        terms = fib_mod10(row["a"], row["b"], 3 + row["n"])  # the question's 3 given steps, then n worked ones
        assert row["answer"] == str(terms[-1])
        assert row["question"].startswith(f"{row['n'] + 2:02d}:{row['a']}+{row['b']}={terms[2]};")
        assert 17 <= row["n"] <= 26


def test_solutions_have_the_shape_of_long_reasoning_decided_at_the_end():
    task = RecurrenceTask()
    tok = task.tokenizer()
    train, _ = task.splits()
    for row in train[:40]:
        good, bad = task.solution(row), task.solution(row, flawed=True)
        ids = tok.encode(good, add_special_tokens=False)
        assert tok.unk_token_id not in ids and tok.decode(ids) == good  # every character is in the vocabulary
        closing = good[good.index("\nlast:"):]
        assert len(ids) >= 150 and len(closing) <= 0.15 * len(ids)
        # the same reasoning up to the closing; the flawed closing is longer and answers the term before
        assert bad.startswith(good[:good.index("\nlast:")]) and len(bad) > len(good)
        assert exact_answer_reward(row, good).correct
        terms = fib_mod10(row["a"], row["b"], 3 + row["n"])
        assert exact_answer_reward(row, bad).correct == (terms[-1] == terms[-2])


@pytest.mark.parametrize("kwargs,field", [(dict(terms=1), "data.terms"), (dict(n_train=0), "data.n_train"),
                                          (dict(n_train=900, n_test=200), "data.n_test must be at most 100")])
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(UsageError, match=field):
        RecurrenceTask(**kwargs)


def test_make_task_follows_the_data_config():
    assert isinstance(make_task(BundledData(task="recurrence", n_train=10, n_test=5)), RecurrenceTask)
    assert make_task(BundledData(task="addition", n_train=10, n_test=5)).digits == 5


def test_warm_starts_are_keyed_by_task(monkeypatch, tmp_path):
    from rpo_train.task import warmstart

    monkeypatch.setenv("RPO_CACHE_DIR", str(tmp_path))
    built = []
    monkeypatch.setattr(warmstart, "train_warm_start",
                        lambda path, cfg, task: built.append((cfg.task, type(task).__name__)) or {"warm_start_s": 0})
    data = BundledData(task="recurrence", n_train=10, n_test=5, seed=7)  # not shipped: another generator seed
    rec = warmstart.ensure_warm_model("tiny-recurrence", data)
    add = warmstart.ensure_warm_model("tiny-addition", BundledData(task="addition", n_train=10, n_test=5, seed=7))
    assert rec != add and built == [("recurrence", "RecurrenceTask"), ("addition", "AdditionTask")]
    assert warmstart.ensure_warm_model("tiny-recurrence", data) == rec
    assert len(built) == 2  # cached: not built again
    with pytest.raises(UsageError, match="set data.task=recurrence"):
        warmstart.ensure_warm_model("tiny-recurrence", BundledData(task="addition"))

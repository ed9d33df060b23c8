"""The recurrence_sum task: seeded disjoint splits, answers computed here from the recurrence, worked solutions of
the promised shape (a long body, a short closing that decides the answer), every flawed habit scored wrong (unless it
happens to hit the answer) and the correct closing right, a warm start keyed apart from the recurrence one, and its
recipe."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from rpo_train.config import load_recipe
from rpo_train.data.config import BundledData
from rpo_train.rewards import exact_answer_reward
from rpo_train.runtime.errors import UsageError
from rpo_train.task import make_task
from rpo_train.task.recurrence import RecurrenceTask
from rpo_train.task.recurrence_sum import HABITS, RecurrenceSumTask
from tests.helpers.task_oracle import fib_mod10


def test_splits_are_seeded_disjoint_and_answered_with_the_sum():
    task = RecurrenceSumTask(n_train=300, n_test=100, seed=7)
    train, test = task.splits()
    assert (train, test) == task.splits() and train != RecurrenceSumTask(n_train=300, n_test=100, seed=8).splits()[0]
    assert len(train) == 300 and len(test) == 100
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert len({r["id"] for r in train + test}) == 400
    # the recurrence task's questions for the same seed, answered differently
    rec_train, _ = RecurrenceTask(n_train=300, n_test=100, seed=7).splits()
    assert [r["question"] for r in train] == [r["question"] for r in rec_train]
    for row in train[:60] + test[:60]:
        terms = fib_mod10(row["a"], row["b"], 3 + row["n"])  # the question's 3 given steps, then n worked ones
        assert row["answer"] == str((terms[-3] + terms[-1]) % 10)
        assert row["question"].startswith(f"{row['n'] + 2:02d}:{row['a']}+{row['b']}={terms[2]};")
        assert 17 <= row["n"] <= 26
    assert len({r["answer"] for r in train + test}) == 10  # every digit: not guessable


def test_solutions_are_long_reasoning_decided_in_a_short_closing():
    task = RecurrenceSumTask()
    tok = task.tokenizer()
    train, _ = task.splits()
    for row in train[:60]:
        t, u, v = fib_mod10(row["a"], row["b"], 3 + row["n"])[-3:]
        s = (t + v) % 10
        good = task.solution(row)
        ids = tok.encode(good, add_special_tokens=False)
        assert tok.unk_token_id not in ids and tok.decode(ids) == good  # every character is in the vocabulary
        body, closing = good[:good.index("\nsum:")], good[good.index("\nsum:"):]
        assert body.endswith(f"00:{t}+{u}={v};") and closing == f"\nsum: {t}+{v}={s}\nAnswer: {s}"
        assert 150 <= len(ids) <= 260 and 10 <= len(closing) <= 25 and len(closing) <= 0.15 * len(ids)
        assert exact_answer_reward(row, good).correct
        expected = {"last": (v, t == 0), "off": ((s + 1) % 10, False), "doubt": ((u + v) % 10, t == u)}
        for habit in HABITS:
            bad = task.solution(row, habit)
            bad_ids = tok.encode(bad, add_special_tokens=False)
            assert tok.unk_token_id not in bad_ids
            # the same reasoning up to the closing; no flawed closing is shorter than the correct one
            assert bad.startswith(body + f"\nsum: {t}+{v}=") and len(bad) >= len(good)
            answer, coincides = expected[habit]
            assert bad.endswith(f"\nAnswer: {answer}")
            assert exact_answer_reward(row, bad).correct == coincides == (str(answer) == row["answer"])
        assert task.solution(row, True) == task.solution(row, "last")
    with pytest.raises(ValueError, match="unknown habit"):
        task.solution(train[0], "guess")


def test_every_habit_is_mostly_wrong():
    task = RecurrenceSumTask()
    train, test = task.splits()
    for habit in HABITS:
        right = sum(exact_answer_reward(r, task.solution(r, habit)).correct for r in train + test)
        assert right <= 0.15 * len(train + test), habit  # only coincidences (t = 0 for last, t = u for doubt)


def test_habits_are_drawn_by_weight():
    task = RecurrenceSumTask(habit_weights=(0.5, 0.25, 0.25))
    rng = random.Random(0)
    counts = Counter(task.draw_habit(rng) for _ in range(4000))
    assert set(counts) == set(HABITS)
    assert abs(counts["last"] / 4000 - 0.5) < 0.04 and abs(counts["off"] / 4000 - 0.25) < 0.04


@pytest.mark.parametrize("kwargs,field", [(dict(terms=1), "data.terms"), (dict(n_train=0), "data.n_train"),
                                          (dict(habit_weights=(1.0, 0.0)), "habit_weights"),
                                          (dict(habit_weights=(0.0, 0.0, 0.0)), "habit_weights")])
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(UsageError, match=field):
        RecurrenceSumTask(**kwargs)


def test_make_task_follows_the_data_config():
    task = make_task(BundledData(task="recurrence_sum", terms=20, n_train=10, n_test=5, seed=3))
    assert isinstance(task, RecurrenceSumTask) and (task.terms, task.n_train, task.n_test, task.seed) == (20, 10, 5, 3)
    assert type(make_task(BundledData(task="recurrence", n_train=10, n_test=5))) is RecurrenceTask


def test_warm_start_draws_habits_only_for_tasks_that_have_them():
    from rpo_train.task.warmstart import _flaw

    rng, ref = random.Random(5), random.Random(5)
    flaws = [_flaw(RecurrenceTask(), rng, 0.3) for _ in range(50)]
    assert flaws == [ref.random() >= 0.3 for _ in range(50)]  # the recurrence warm start's draws are unchanged
    flaws = [_flaw(RecurrenceSumTask(), rng, 0.3) for _ in range(200)]
    assert set(flaws) == {False, *HABITS}


def test_warm_start_is_keyed_apart_from_the_recurrence_one(monkeypatch, tmp_path):
    from rpo_train.task import warmstart

    monkeypatch.setenv("RPO_CACHE_DIR", str(tmp_path))
    built = []
    monkeypatch.setattr(warmstart, "train_warm_start",
                        lambda path, cfg, task: built.append((cfg.task, type(task).__name__)) or {"warm_start_s": 0})
    summed = warmstart.ensure_warm_model("tiny-recurrence-sum", BundledData(task="recurrence_sum", n_train=10,
                                                                            n_test=5, seed=7))
    rec = warmstart.ensure_warm_model("tiny-recurrence", BundledData(task="recurrence", n_train=10, n_test=5, seed=7))
    assert summed != rec and built == [("recurrence_sum", "RecurrenceSumTask"), ("recurrence", "RecurrenceTask")]
    assert summed.name.startswith("tiny-recurrence-sum-")
    with pytest.raises(UsageError, match="set data.task=recurrence_sum"):
        warmstart.ensure_warm_model("tiny-recurrence-sum", BundledData(task="recurrence"))


def test_recipe_loads():
    cfg = load_recipe("tiny-cpu-sum")
    assert cfg.model == "builtin:tiny-recurrence-sum" and cfg.data.task == "recurrence_sum"
    assert (cfg.batch_questions, cfg.rollout.group_size, cfg.rollout.temperature, cfg.optim.lr) == (16, 8, 0.7, 2e-4)
    assert cfg.objective.mode == "rpo" and cfg.eval_every == 10
    task = make_task(cfg.data)
    rows = task.splits()[0]
    longest = max(len(task.solution(r, h)) for r in rows for h in HABITS)
    assert longest + 1 <= cfg.rollout.max_response_len and longest + 1 <= cfg.eval_max_new_tokens  # with EOS
    # the deepest cut reaches back before every closing (with its EOS), the decision included
    closings = [len(task.solution(r, h)) - task.solution(r).index("\nsum:") for r in rows for h in (False, *HABITS)]
    assert cfg.truncation.max_cut >= max(closings) + 1

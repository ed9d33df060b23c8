"""rpo-analyze's bookkeeping: what a kept share measures, the recommended L, reuse of finished shares, errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from rpo_train.analyze import AnalysisConfig, main, measure_share, recommend
from rpo_train.config import RolloutConfig
from rpo_train.data import Question
from rpo_train.rewards import RewardResult
from rpo_train.runtime.errors import UsageError


class ScriptedEngine:
    """Continuations from a script: ``script(prompt index, prefix, sample) -> token ids``; records its calls."""

    def __init__(self, script):
        self.script, self.calls = script, []

    def generate(self, prompts, *, prefixes, n, params):
        self.calls.append((prefixes, list(params.max_new_tokens)))
        return [[SimpleNamespace(token_ids=self.script(i, p, j)) for j in range(n)] for i, p in enumerate(prefixes)]


def fake_inputs(engine):
    """Token id 1 means 'correct', 0 'wrong'; a response is judged by its last token."""
    tok = SimpleNamespace(decode=lambda ids, skip_special_tokens=True: "".join(map(str, ids)))
    judge = lambda row, text: RewardResult(float(text[-1:] == "1"), text[-1:] == "1")  # noqa: E731
    return SimpleNamespace(tokenizer=tok, reward_fn=judge, engine=engine, stop_ids=[])


def test_a_share_counts_pass_open_flip_and_tokens():
    questions = [Question("q0", "a", "?", "1", [9]), Question("q1", "b", "?", "1", [9])]
    responses = [[0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]  # the first correct, the second wrong
    # question 0: continuations alternate right/wrong (open); question 1: always wrong (closed)
    engine = ScriptedEngine(lambda i, p, j: [0, 1] if i == 0 and j % 2 == 0 else [0, 0, 0])
    cfg = SimpleNamespace(seed=0, rollout=RolloutConfig(max_response_len=20, temperature=1.0))
    row = measure_share(cfg, fake_inputs(engine), questions, responses, [True, False], 0.5, 4)
    assert engine.calls[0][0] == [[0, 0], [0, 0, 0, 0, 0]]  # round(0.5 x len) tokens kept
    assert engine.calls[0][1] == [18, 15]  # each continuation may run to the length limit
    assert row["cut_tokens"] == pytest.approx((2 + 5) / 2)
    assert row["pass_rate"] == pytest.approx(2 / 8) and row["open_share"] == pytest.approx(0.5)
    assert row["flip_rate"] == pytest.approx(2 / 8)  # question 0's wrong continuations flip its correct original
    assert row["tokens_per_continuation"] == pytest.approx((2 * 2 + 2 * 3 + 4 * 3) / 8)
    whole = measure_share(cfg, fake_inputs(engine), questions, responses, [True, False], 1.0, 4)
    assert len(engine.calls) == 1 and whole["pass_rate"] == 0.5 and whole["open_share"] == whole["flip_rate"] == 0


def shares(points):
    return [{"kept_share": 1 - m / 200, "cut_tokens": m, "open_share": o, "pass_rate": 0.5, "flip_rate": 0.1,
             "tokens_per_continuation": m} for m, o in points]


def test_recommendation_follows_where_the_outcome_opens():
    late = recommend(shares([(0, 0.0), (10, 0.0), (20, 0.8), (200, 0.8)]), 200.0, 0.5)
    # open(m) rises from 0 at m = 10 to 0.8 at m = 20, flat after: the mean over 0..L reaches 0.4 at L = 30
    assert late["L"] == 30 and late["token_share"] == pytest.approx(30 / 2 / 200) and "rule" in late
    early = recommend(shares([(0, 0.0), (150, 0.1), (200, 0.9)]), 200.0, 0.5)
    assert early["L"] == 200 and "as long as the responses" in early["why"]
    assert recommend(shares([(0, 0.0), (200, 0.0)]), 200.0, 0.5)["L"] is None


@pytest.mark.parametrize("kwargs,arg", [(dict(questions=0), "--questions"), (dict(group_size=1), "--group-size"),
                                        (dict(shares=(0.5, 1.0)), "--shares"), (dict(keep_open=0.0), "--keep-open")])
def test_bad_settings_name_the_option(kwargs, arg):
    with pytest.raises(UsageError, match=arg):
        AnalysisConfig(**kwargs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from rpo_train.task.recurrence import RecurrenceTask
    from rpo_train.task.tokenizer import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("m") / "tiny", hidden=32, max_positions=320,
                                tokenizer=RecurrenceTask().tokenizer())


def test_the_command_writes_results_and_reuses_finished_shares(tiny, tmp_path, capsys, monkeypatch):
    argv = ["--questions", "3", "--group-size", "2", "--shares", "0,0.5,1", "--out", str(tmp_path / "a"),
            f"model={tiny}", f"out_dir={tmp_path / 'run'}", "data.n_train=8", "data.n_test=2",
            "rollout.max_response_len=40"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| 0.5 |" in out and "recommended truncation" in out
    meta = json.loads((tmp_path / "a" / "segments.json").read_text())
    assert meta["done"] == 3 and "advice" in meta and (tmp_path / "a" / "segments.png").is_file()
    lines = (tmp_path / "a" / "segments.csv").read_text().splitlines()
    assert lines[0].startswith("kept_share,cut_tokens") and len(lines) == 4
    from rpo_train.rollout import NativeEngine

    calls = []
    real = NativeEngine.generate
    monkeypatch.setattr(NativeEngine, "generate", lambda self, *a, **kw: calls.append(kw.get("prefixes"))
                        or real(self, *a, **kw))
    assert main(argv) == 0
    assert calls == [None]  # only the original responses are sampled again: every share was reused
    assert (tmp_path / "a" / "segments.csv").read_text().splitlines() == lines


def test_a_cache_that_does_not_fit_is_one_line(tiny, tmp_path, capsys):
    from rpo_train.cache import ExperienceCache

    cache = ExperienceCache()
    cache.put("some-other-question", [1, 2], [3, 4], reward=0.0, correct=False, step=0)
    path = cache.save(tmp_path / "cache.safetensors")
    argv = ["--questions", "2", "--cache", str(path), f"model={tiny}", f"out_dir={tmp_path / 'run'}",
            "data.n_train=8", "data.n_test=2", "rollout.max_response_len=40"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("rpo-analyze: --cache") and "no entry for question" in err
    assert main(["--shares", "0.5", f"model={tiny}"]) == 2
    assert "--shares must be kept shares" in capsys.readouterr().err
    assert main(["--shares", "0,half", f"model={tiny}"]) == 2
    assert "--shares must be comma-separated numbers" in capsys.readouterr().err

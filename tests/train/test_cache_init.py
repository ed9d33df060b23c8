"""The cache init (``rpo_train.cache_init``): eager and lazy write the same entries under the same weights; a lazy
run initialises exactly the questions it draws and counts their tokens and time."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rpo_train.cache import CacheConfig
from rpo_train.cache_init import init_mode
from rpo_train.task.tokenizer import make_tiny_checkpoint
from tests.helpers.train_configs import config, latest_state_file, ones_reward


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", hidden=32, max_positions=96)


def test_auto_is_lazy_when_the_run_draws_fewer_questions_than_the_data_holds():
    assert init_mode("auto", steps=40, batch_questions=8, n_train=400) == "lazy"
    assert init_mode("auto", steps=50, batch_questions=8, n_train=400) == "eager"
    assert init_mode("eager", 1, 1, 400) == "eager" and init_mode("lazy", 100, 8, 4) == "lazy"
    with pytest.raises(ValueError, match="cache.init must be one of"):
        CacheConfig(init="later")


def test_lazy_entries_equal_eager_ones_under_the_same_weights(checkpoint, tmp_path):
    """Question i's lazy init, drawn alone or with others, is eager's entry for it: the same seed (run seed, attempt,
    i), the same response, reward and writer log-probs (up to the rounding of other batch shapes)."""
    from rpo_train.trainer import Trainer

    resample = CacheConfig(resample_no_answer=1)
    eager = Trainer(config(checkpoint, tmp_path / "eager", cache=dataclasses.replace(resample, init="eager")),
                    reward_fn=ones_reward)
    eager.init_cache()
    lazy = Trainer(config(checkpoint, tmp_path / "lazy", cache=dataclasses.replace(resample, init="lazy")),
                   reward_fn=ones_reward)
    assert lazy.lazy_init is not None and len(lazy.cache) == 0
    drawn = [lazy.train_questions[i] for i in (7, 2, 7, 10)]  # a repeat is initialised once
    filled, seconds = lazy.lazy_init.fill(lazy.cache, drawn, lazy.engine, lazy.cfg, lazy.tokenizer, lazy.reward_fn,
                                          lazy.stop_ids)
    assert sorted(filled) == sorted({q.qid for q in drawn}) and seconds > 0 and len(lazy.cache) == 3
    for qid, (generated, length) in filled.items():
        a, b = eager.cache.entries[qid], lazy.cache.entries[qid]
        assert (a.response_ids, a.reward, a.correct, a.step, a.cut_limit) == (b.response_ids, b.reward, b.correct,
                                                                              b.step, b.cut_limit)
        torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), atol=1e-5, rtol=0)
        assert length == len(b.response_ids) <= generated  # a retried question counts both samples
    assert lazy.lazy_init.fill(lazy.cache, drawn, lazy.engine, lazy.cfg, lazy.tokenizer, lazy.reward_fn,
                               lazy.stop_ids) == ({}, 0.0)


def test_a_lazy_run_initialises_what_it_draws_and_counts_it(checkpoint, tmp_path):
    from rpo_train.trainer import Trainer

    cfg = config(checkpoint, tmp_path, steps=2, batch_questions=3)  # 6 draws < 12 questions: auto is lazy
    trainer = Trainer(cfg, reward_fn=ones_reward)
    inits = []
    real = trainer.lazy_init.fill

    def fill(*args):
        filled, seconds = real(*args)
        inits.append((dict(filled), seconds))  # the trainer hands the dict's items on to the groups
        return filled, seconds

    trainer.lazy_init.fill = fill
    summary = trainer.train()
    assert summary["cache_init"] == "lazy" and summary["cache_init_s"] > 0
    drawn = {g for filled, _ in inits for g in filled}
    assert len(trainer.cache) == len(drawn) == 6  # no question drawn twice in two steps of 3 out of 12
    init_tokens = sum(t for filled, _ in inits for t, _ in filled.values())
    rollout_tokens = trainer.run.rollout_counts["tokens"]
    assert summary["tokens_generated"] == init_tokens + rollout_tokens
    lengths = [n for filled, _ in inits for _, n in filled.values()]
    assert summary["full_path_tokens_per_sample"] == pytest.approx(sum(lengths) / len(lengths))


def test_a_checkpoint_from_before_cache_init_resumes_and_a_changed_setting_does_not(checkpoint, tmp_path):
    """A checkpoint written before ``cache.init`` existed resumes (a setting added since counts at its default);
    one whose cache section truly differs is refused with the section named."""
    import json

    from rpo_train.runtime.errors import UsageError
    from rpo_train.trainer import Trainer

    cfg = config(checkpoint, tmp_path, steps=1, save_every=1)
    Trainer(cfg, reward_fn=ones_reward).train()
    state_path = latest_state_file(tmp_path)
    state = json.loads(state_path.read_text())
    counts = state["rollout_counts"]
    want = counts["init_length"] / counts["init_responses"]
    del state["config"]["cache"]["init"], state["cache_init"], counts["init_responses"], counts["init_length"]
    counts["init_mean_length"] = want  # the former counters
    state_path.write_text(json.dumps(state))
    resumed = Trainer(cfg, reward_fn=ones_reward)
    assert resumed.resume() and resumed.run.init_mode == "eager"
    counts = resumed.run.rollout_counts
    assert counts["init_length"] / counts["init_responses"] == pytest.approx(want)
    state["config"]["cache"]["epsilon"] = 0.25
    state_path.write_text(json.dumps(state))
    with pytest.raises(UsageError, match="config section 'cache' differs"):
        Trainer(cfg, reward_fn=ones_reward).resume()


def test_a_lazy_run_resumed_with_more_steps_stays_lazy(checkpoint, tmp_path):
    """auto picks lazy for 2 steps x 4 of 12 questions and eager for 4 steps; raising steps on resume keeps the
    run's own choice, and every question drawn after the resume still gets its entry when drawn."""
    from rpo_train.trainer import Trainer

    first = Trainer(config(checkpoint, tmp_path, steps=2, save_every=1), reward_fn=ones_reward)
    assert first.run.init_mode == "lazy"
    first.train()
    seen = len(first.cache)
    assert seen < 12
    again = Trainer(config(checkpoint, tmp_path, steps=4, save_every=1), reward_fn=ones_reward)
    assert again.run.init_mode == "eager"
    summary = again.train()
    assert again.run.init_mode == summary["cache_init"] == "lazy" and len(again.cache) > seen

"""Decode, then score (``rpo_train.groups.sample_and_score``): the helper samples exactly what ``engine.generate``
samples under the same ``SamplingParams``, and the step's groups and the cache init score what the engine returned
for their seeds."""

from __future__ import annotations

import pytest

from rpo_train.cache import ExperienceCache
from rpo_train.cache_init import sample_init
from rpo_train.groups import rollout_groups, sample_and_score
from rpo_train.rollout import SamplingParams
from rpo_train.run_inputs import load_run_inputs
from rpo_train.runtime.seeding import derive_seed
from rpo_train.task.tokenizer import make_tiny_checkpoint
from tests.helpers.train_configs import config, ones_reward


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    checkpoint = make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", hidden=32, max_positions=96)
    cfg = config(checkpoint, tmp_path_factory.mktemp("run"), mode="full")
    return cfg, load_run_inputs(cfg, "cpu", reward_fn=ones_reward)


def _verdicts(tokenizer, questions, prefixes, groups):
    """(text, reward, correct) of every completion, decoded and judged by hand."""
    out = []
    for q, prefix, group in zip(questions, prefixes, groups):
        texts = [tokenizer.decode(list(prefix) + list(c.token_ids), skip_special_tokens=True) for c in group]
        out.append([(t, ones_reward(q, t).reward, ones_reward(q, t).correct) for t in texts])
    return out


def test_the_helper_samples_what_generate_samples(run):
    cfg, inputs = run
    rows = inputs.train_questions[:3]
    prompts = [q.prompt_ids for q in rows]
    prefixes = [[5, 6], [], [7]]
    params = cfg.rollout.sampling_params([6, 4, 5], seed=[11, 12, 13], stop_token_ids=inputs.stop_ids)
    want = inputs.engine.generate(prompts, prefixes=prefixes, n=3, params=params)
    got = sample_and_score(inputs.engine, rows, params, inputs.tokenizer, ones_reward, prefixes=prefixes, n=3)
    assert [[s.completion for s in group] for group in got] == want  # same tokens, log-probs and finish reasons
    assert [[(s.text, s.reward, s.correct) for s in group] for group in got] == _verdicts(inputs.tokenizer, rows,
                                                                                          prefixes, want)


def test_no_rows_call_no_engine():
    class Refuses:
        def generate(self, *args, **kwargs):
            raise AssertionError("no rows: the engine must not be called")

    assert sample_and_score(Refuses(), [], SamplingParams(), None, ones_reward) == []


def test_step_groups_and_cache_init_score_the_samples_of_their_seeds(run):
    """The groups of a step and the init responses are the engine's samples under the run's sampling settings and
    the seeds they have always used (the group's derive_seed(seed, "sample"); the init's (run seed, "init", attempt,
    index)), judged on the decoded response."""
    cfg, inputs = run
    rows = inputs.train_questions[:3]
    prompts = [q.prompt_ids for q in rows]
    seeds = [101, 202, 303]
    groups = rollout_groups(inputs.engine, rows, ExperienceCache(), cfg, inputs.tokenizer, ones_reward, seeds,
                            inputs.stop_ids)
    r = cfg.rollout
    params = SamplingParams(r.max_response_len, r.temperature, r.top_p, r.top_k, inputs.stop_ids,
                            [derive_seed(s, "sample") for s in seeds])
    want = inputs.engine.generate(prompts, n=r.group_size, params=params)
    assert [g.suffixes for g in groups] == [[c.token_ids for c in group] for group in want]
    assert [g.suffix_logprobs for g in groups] == [[c.logprobs for c in group] for group in want]
    verdicts = _verdicts(inputs.tokenizer, rows, [[]] * len(rows), want)
    assert [g.correct for g in groups] == [[v[2] for v in group] for group in verdicts]

    found = sample_init(inputs.engine, rows, [4, 0, 9], cfg, inputs.tokenizer, ones_reward, inputs.stop_ids)
    params = SamplingParams(r.max_response_len, r.temperature, r.top_p, r.top_k, inputs.stop_ids,
                            [derive_seed(cfg.seed, "init", 0, i) for i in (4, 0, 9)])
    want = inputs.engine.generate(prompts, n=1, params=params)
    assert [(f.ids, f.logprobs) for f in found] == [(c.token_ids, c.logprobs) for (c,) in want]
    assert [(f.reward, f.correct) for f in found] == [v[0][1:] for v in _verdicts(inputs.tokenizer, rows,
                                                                                  [[]] * len(rows), want)]

"""The drift guard and the cut options: drift statistics, refresh triggers and their accounting, adaptive L and
entropy-peak cuts (reproducible by seed), and the clear errors of their settings."""

from __future__ import annotations

import math
import random

import pytest

from rpo_train.cache import CacheConfig, CacheEntry
from rpo_train.config import load_recipe
from rpo_train.cuts import TruncationConfig
from rpo_train.drift import Drift, drift_metrics, measure, refresh_reason
from rpo_train.runtime.errors import UsageError
from rpo_train.task.tokenizer import make_tiny_checkpoint
from tests.helpers.train_configs import config, ones_reward


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", hidden=32, max_positions=96)


def entry(n=20, reuses=0, cut_limit=0.0, logprobs=None):
    return CacheEntry([1], list(range(100, 100 + n)), 1.0, True, 0, n, logprobs or [-1.0] * n, reuses, cut_limit)


def test_drift_statistics_against_hand_computed_values():
    d = measure([-1.0, -2.0, float("nan"), -0.5], [-1.5, -1.0, -9.0, -0.5])  # the NaN writer is skipped
    assert d.tokens == 3 and d.flips == 0
    assert d.kl == pytest.approx((0.5 - 1.0 + 0.0) / 3)  # mean(log p_writer - log p_now)
    assert d.m2 == pytest.approx((0.25 + 1.0 + 0.0) / 3)
    assert measure([float("nan")], [-1.0]) == Drift(0.0, 0.0, 0, 0)
    # flips: written with p > 0.9, now p < 0.5 (a token the policy would no longer write greedily)
    sure, unsure = math.log(0.95), math.log(0.6)
    flipped = measure([sure, sure, unsure, sure], [math.log(0.4), math.log(0.55), math.log(0.1), sure])
    assert flipped.flips == 1
    # drop: the largest fall of one token's log-prob, whatever its writer's probability (a rise counts as no fall)
    assert flipped.drop == pytest.approx(math.log(0.6) - math.log(0.1))
    assert measure([-1.07, -0.5], [-15.79, -0.1]).drop == pytest.approx(14.72)
    assert measure([-2.0], [-1.0]).drop == 0.0
    with pytest.raises(ValueError, match="2 written log-probs but 1"):
        measure([-1.0, -1.0], [-1.0])


def test_refresh_triggers_by_drift_reuses_and_share():
    rng = random.Random(0)
    e = entry(reuses=3)
    drifted = Drift(kl=0.02, m2=0.3, flips=2, tokens=20)
    assert refresh_reason(e, drifted, CacheConfig(), rng) is None  # everything off: the paper's RPO
    assert refresh_reason(e, drifted, CacheConfig(refresh_drift=0.2), rng) == "drift"  # m2 0.3 > 0.2
    assert refresh_reason(e, drifted, CacheConfig(refresh_drift=0.2, refresh_stat="kl"), rng) is None
    assert refresh_reason(e, drifted, CacheConfig(refresh_drift=0.01, refresh_stat="kl"), rng) == "drift"
    assert refresh_reason(e, drifted, CacheConfig(refresh_drift=2, refresh_stat="flips"), rng) == "drift"
    assert refresh_reason(e, drifted, CacheConfig(refresh_drift=3, refresh_stat="flips"), rng) is None
    fallen = Drift(kl=0.001, m2=0.9, flips=0, tokens=200, drop=14.7)  # one token ruled out, no flip
    assert refresh_reason(e, fallen, CacheConfig(refresh_drift=4.6, refresh_stat="drop"), rng) == "drift"
    assert refresh_reason(e, fallen, CacheConfig(refresh_drift=1, refresh_stat="flips"), rng) is None
    assert refresh_reason(e, None, CacheConfig(refresh_drift=0.01), rng) is None  # not measured: no decision
    assert refresh_reason(e, drifted, CacheConfig(max_reuses=3), rng) == "reuses"
    assert refresh_reason(e, drifted, CacheConfig(max_reuses=4), rng) is None
    draws = [refresh_reason(e, None, CacheConfig(full_share=0.25), random.Random(s)) for s in range(4000)]
    assert set(draws) == {None, "share"} and 0.22 < draws.count("share") / 4000 < 0.28
    again = [refresh_reason(e, None, CacheConfig(full_share=0.25), random.Random(s)) for s in range(4000)]
    assert draws == again  # seeded: the same on every rank
    every = CacheConfig(full_share=0.05, refresh_every=5)  # the same share, batched into every 5th step
    assert all(refresh_reason(e, None, every, random.Random(s), step=7) is None for s in range(500))
    batched = [refresh_reason(e, None, every, random.Random(s), step=10) for s in range(4000)]
    assert 0.22 < batched.count("share") / 4000 < 0.28

def test_drift_metrics_give_means_p95_and_refresh_counts():
    drifts = [Drift(0.01 * i, 0.1 * i, i % 2, 10) for i in range(1, 21)] + [None, Drift(0.0, 0.0, 0, 0)]
    reasons = [None] * 18 + ["drift", "reuses", "share", "share"]
    m = drift_metrics(drifts, reasons)
    assert m["cache/drift_m2_mean"] == pytest.approx(1.05) and m["cache/drift_m2_p95"] == pytest.approx(1.9)
    assert m["cache/drift_kl_mean"] == pytest.approx(0.105) and m["cache/drift_flipped_share"] == 0.5
    assert m["rollout/refresh_share"] == pytest.approx(4 / 22)
    assert (m["rollout/refreshes_drift"], m["rollout/refreshes_reuses"], m["rollout/refreshes_share"]) == (1, 1, 2)


def test_adaptive_limit_grows_on_zero_variance_and_shrinks_on_mixed_groups_within_bounds():
    t = TruncationConfig("adaptive", min_cut=8, max_cut=100, grow=2.0, shrink=0.5)
    limit = t.initial_limit()
    assert limit == 8
    for want in (16, 32, 64, 100, 100):
        limit = t.adapt(limit, zero_variance=True)
        assert limit == want
    for want in (50, 25, 12.5, 8, 8):
        limit = t.adapt(limit, zero_variance=False)
        assert limit == want
    assert t.limit(entry(cut_limit=12.5)) == 12
    cuts = {t.cut(entry(n=40, cut_limit=12.0), random.Random(s))[1] for s in range(500)}
    assert cuts == set(range(13))  # m ~ U{0..L} with the question's own L
    assert TruncationConfig("fixed", max_cut=5).adapt(7.0, True) == 7.0  # other modes leave it alone


def test_entropy_cut_draws_among_the_highest_entropy_tokens_of_the_window():
    t = TruncationConfig("fixed", max_cut=10, cut_at="entropy", entropy_top=0.2)
    e = entry(n=30)
    entropy = [0.1] * 30
    entropy[22], entropy[27], entropy[5] = 2.0, 1.5, 9.0  # 5 lies outside the last 10 tokens
    picks = [t.cut(e, random.Random(s), entropy) for s in range(200)]
    assert {m for _, m in picks} == {8, 3}  # tokens 22 and 27 are sampled again first
    for prefix, m in picks:
        assert prefix == e.response_ids[:30 - m]
    assert [t.cut(e, random.Random(s), entropy) for s in range(50)] == [t.cut(e, random.Random(s), entropy)
                                                                        for s in range(50)]
    with pytest.raises(ValueError, match="one entropy per response token"):
        t.cut(e, random.Random(0), None)


@pytest.mark.parametrize("override,message", [
    ("truncation.mode=adaptive", "truncation.min_cut (40) must not exceed truncation.max_cut (30)"),
    ("truncation.cut_at=peaks", "truncation.cut_at must be one of"),
    ("truncation.entropy_top=0", "truncation.entropy_top must be in (0, 1]"),
    ("cache.full_share=1.5", "cache.full_share must be in [0, 1]"),
    ("cache.refresh_stat=kl2", "cache.refresh_stat must be one of"),
    ("cache.refresh_drift=-1", "cache.refresh_drift must be >= 0"),
    ("cache.refresh_every=0", "cache.refresh_every must be an int >= 1"),
    ("cache_epsilon=0.5", "key 'cache_epsilon' is now 'cache.epsilon'"),
])
def test_bad_guard_settings_name_the_field(override, message):
    extra = ["truncation.min_cut=40"] if override == "truncation.mode=adaptive" else []
    with pytest.raises(UsageError) as err:
        load_recipe("tiny-cpu", [override, *extra])
    assert message in str(err.value)


def test_refreshed_groups_run_the_full_path_and_count_as_rollout(checkpoint, tmp_path):
    """max_reuses = 1: step 1 re-uses every init entry once, so at step 2 every group is refreshed: no prefix, the
    full budget, its tokens counted; the cache then holds a fresh body (reuses 0) with the sampler's log-probs."""
    from rpo_train.trainer import Trainer

    trainer = Trainer(config(checkpoint, tmp_path, steps=2, batch_questions=12, cache=CacheConfig(max_reuses=1)),
                      reward_fn=ones_reward)
    trainer.init_cache()
    init_tokens = trainer.run.tokens_generated
    assert all(not any(math.isnan(x) for x in e.logprobs) for e in trainer.cache.entries.values())
    first = trainer.train_step()
    assert first["rollout/refresh_share"] == 0 and first["rollout/prefix_len"] > 0
    assert {e.reuses for e in trainer.cache.entries.values()} == {1}
    assert first["cache/drift_m2_mean"] < 1e-8  # the init's writer is the current policy: no drift yet
    kept, rolled, stats = trainer._collect()
    assert stats["rollout/refresh_share"] == 1 and stats["rollout/refreshes_reuses"] == 12
    assert all(g.prefix_ids == [] and g.refresh == "reuses" and g.cut == 0 for g in rolled)
    generated = sum(len(s) for g in rolled for s in g.suffixes)
    assert trainer.run.tokens_generated == init_tokens + first["rollout/generated_tokens"] + generated
    assert trainer.run.rollout_counts["refreshed"] == 12 and trainer.run.rollout_counts["groups"] == 24


def test_drift_rises_after_updates_and_a_threshold_refreshes(checkpoint, tmp_path):
    from rpo_train.trainer import Trainer

    trainer = Trainer(config(checkpoint, tmp_path, steps=3, batch_questions=12,
                             cache=CacheConfig(refresh_drift=1e-6, refresh_stat="m2")), reward_fn=ones_reward)
    trainer.init_cache()
    first = trainer.train_step()  # lr 1e-2 moves a random model a lot
    assert first["rollout/refresh_share"] == 0
    second = trainer.train_step()
    assert second["cache/drift_m2_mean"] > 1e-6 and second["rollout/refreshes_drift"] > 0


@pytest.mark.parametrize("refresh_drift", [0.0, 0.5])
def test_probe_every_skips_the_probe_unless_a_refresh_reads_it(tmp_path, refresh_drift):
    """cache.probe_every = 2: the drift probe runs on steps 1 and 3 only (their rows carry the drift metrics), unless
    a drift refresh needs it on every step."""
    import json

    from rpo_train.trainer import Trainer

    checkpoint = make_tiny_checkpoint(tmp_path / "tiny", hidden=32, max_positions=96)
    cfg = config(checkpoint, tmp_path / "run", steps=3, cache=CacheConfig(probe_every=2, refresh_drift=refresh_drift))
    trainer = Trainer(cfg, reward_fn=ones_reward)
    probed = []
    real = trainer._probe
    trainer._probe = lambda *a: probed.append(trainer.run.step + 1) or real(*a)
    trainer.train()
    want = [1, 2, 3] if refresh_drift else [1, 3]
    assert sorted(set(probed)) == want
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows[1:] if "cache/drift_kl_mean" in r] == want
    with pytest.raises(UsageError, match="cache.probe_every must be an int >= 1"):
        CacheConfig(probe_every=0)

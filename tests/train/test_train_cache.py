"""Experience cache: truncation policies, epsilon-greedy updates, persistence and crash safety."""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from rpo_train.cache import ExperienceCache
from rpo_train.cuts import TruncationConfig
from rpo_train.data import question_id


def filled(n=5, length=40):
    cache = ExperienceCache()
    for i in range(n):
        prompt = [1, 2, i]
        cache.put(question_id(prompt), prompt, list(range(100, 100 + length + i)), reward=float(i % 2),
                  correct=bool(i % 2), step=0, logprobs=[-0.5 - 0.01 * t for t in range(length + i)], reuses=i,
                  cut_limit=8.0 + i)
    return cache


def test_question_id_is_stable_and_prompt_checked():
    assert question_id([1, 2, 3]) == question_id([1, 2, 3]) != question_id([1, 2, 4])
    cache = filled()
    qid = question_id([1, 2, 0])
    assert cache.get(qid, [1, 2, 0]).length == 40
    with pytest.raises(ValueError, match="cached prompt differs"):
        cache.get(qid, [9, 9])
    with pytest.raises(KeyError, match="initialise the cache"):
        cache.get("nope", [1])


def test_fixed_truncation_is_uniform_and_guards_edges():
    entry = filled(1, length=10).entries[question_id([1, 2, 0])]
    rng = random.Random(0)
    cuts = [TruncationConfig("fixed", max_cut=4).cut(entry, rng) for _ in range(2000)]
    ms = [m for _, m in cuts]
    assert set(ms) == {0, 1, 2, 3, 4}
    assert all(len(p) == 10 - m and p == entry.response_ids[:10 - m] for p, m in cuts)
    assert max(ms.count(k) for k in range(5)) / min(ms.count(k) for k in range(5)) < 1.3
    # m >= len(a): the prefix is empty (a full-path rollout)
    long_cut = TruncationConfig("fixed", max_cut=50)
    assert any(p == [] for p, _ in (long_cut.cut(entry, rng) for _ in range(200)))
    assert TruncationConfig("fixed", max_cut=0).cut(entry, rng) == (entry.response_ids, 0)


def test_dynamic_truncation_uses_shortest_of_last_group():
    cache = ExperienceCache()
    rng = random.Random(1)
    cache.update_from_group("q", [1], [[5] * 30, [5] * 12, [5] * 20], [0.0, 1.0, 0.0], [False, True, False],
                            step=3, epsilon=1.0, rng=rng)
    entry = cache.entries["q"]
    assert entry.group_min_len == 12 and entry.length == 12 and entry.correct and entry.step == 3
    assert TruncationConfig("dynamic", factor=0.5).limit(entry) == 6
    assert TruncationConfig("dynamic", factor=1.0).limit(entry) == 12


def test_epsilon_greedy_picks_best_or_random():
    rng = random.Random(0)
    cache = ExperienceCache()
    rewards = [0.1, 0.9, 0.9, 0.0]
    picks = [cache.update_from_group("q", [1], [[i] for i in range(4)], rewards, [False] * 4, 1, 1.0, rng)
             for _ in range(400)]
    assert set(picks) == {1, 2}  # ties broken at random
    picks = [cache.update_from_group("q", [1], [[i] for i in range(4)], rewards, [False] * 4, 1, 0.0, rng)
             for _ in range(400)]
    assert set(picks) == {0, 1, 2, 3}
    picks = [cache.update_from_group("q", [1], [[i] for i in range(4)], rewards, [False] * 4, 1, 0.5, rng)
             for _ in range(2000)]
    share_best = sum(p in (1, 2) for p in picks) / len(picks)
    assert 0.70 < share_best < 0.80  # 0.5 + 0.5 * 2/4
    with pytest.raises(ValueError, match="epsilon"):
        cache.update_from_group("q", [1], [[1]], [1.0], [True], 1, 1.5, rng)


def test_save_load_roundtrip_and_metrics(tmp_path):
    cache = filled()
    path = cache.save(tmp_path / "cache.safetensors")
    again = ExperienceCache.load(path)
    assert again.entries == cache.entries
    m = again.metrics(step=4)
    assert m["cache/mean_length"] == pytest.approx(42) and m["cache/correct_share"] == pytest.approx(0.4)
    assert m["cache/mean_age"] == 4 and m["cache/mean_reuses"] == 2


def test_writer_logprobs_follow_the_kept_tokens_and_old_files_load(tmp_path):
    cache = ExperienceCache()
    cache.update_from_group("q", [1], [[5, 6, 7], [5, 6]], [1.0, 0.0], [True, False], step=2, epsilon=1.0,
                            rng=random.Random(0), logprobs=[[-1.0, -2.0, -3.0], [-1.0, -2.5]], reuses=3,
                            cut_limit=12.0)
    entry = cache.entries["q"]
    assert entry.logprobs == [-1.0, -2.0, -3.0] and entry.reuses == 3 and entry.cut_limit == 12.0
    with pytest.raises(ValueError, match="3 response ids but 2 logprobs"):
        cache.put("bad", [1], [1, 2, 3], reward=0.0, correct=False, step=0, logprobs=[0.0, 0.0])
    cache.put("unknown", [2], [4, 4], reward=0.0, correct=False, step=0)  # writer unknown: NaN
    assert all(math.isnan(x) for x in cache.entries["unknown"].logprobs)
    again = ExperienceCache.load(cache.save(tmp_path / "c.safetensors"))
    assert again.digest() == cache.digest() and again.entries["q"] == entry
    # a cache of the previous format (no log-probs, reuses or limits) loads with unknown writers
    import torch
    from safetensors.torch import save_file

    old = {"prompt_ids": torch.tensor([1]), "prompt_offsets": torch.tensor([0, 1]),
           "response_ids": torch.tensor([5, 6]), "response_offsets": torch.tensor([0, 2]),
           "reward": torch.tensor([1.0], dtype=torch.float64), "correct": torch.tensor([1], dtype=torch.uint8),
           "step": torch.tensor([0]), "group_min_len": torch.tensor([2])}
    save_file(old, str(tmp_path / "old.safetensors"), metadata={"format": "rpo-experience-cache/1",
                                                                "qids": '["q"]'})
    loaded = ExperienceCache.load(tmp_path / "old.safetensors").entries["q"]
    assert loaded.response_ids == [5, 6] and loaded.reuses == 0 and all(math.isnan(x) for x in loaded.logprobs)


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="experience cache file not found"):
        ExperienceCache.load(tmp_path / "missing.safetensors")
    import torch
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an rpo experience cache"):
        ExperienceCache.load(tmp_path / "other.safetensors")


WRITER = """
import sys
from rpo_train.cache import ExperienceCache
path, n = sys.argv[1], 0
while True:
    c = ExperienceCache()
    for i in range(300):
        c.put(str(i), [i], list(range(n % 7, 400 + n % 7)), reward=1.0, correct=True, step=n)
    c.save(path)
    n += 1
    print(n, flush=True)
"""


def test_survives_kill_9_mid_write(tmp_path):
    path = tmp_path / "cache.safetensors"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"  # one complete save exists
        for delay in (0.013, 0.029, 0.041):
            time.sleep(delay)
            loaded = ExperienceCache.load(path)  # a reader meanwhile always sees a whole file
            assert len(loaded) == 300
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    loaded = ExperienceCache.load(path)
    steps = {e.step for e in loaded.entries.values()}
    assert len(loaded) == 300 and len(steps) == 1  # one consistent generation, not a mix
    leftovers = [p for p in tmp_path.iterdir() if p.name != "cache.safetensors"]
    assert all(p.name.startswith(".") for p in leftovers), leftovers  # only hidden temp files of the killed write

"""RPO inside TRL (``rpo_train.integrations``): the trainer-independent prefix plan, and ``RPOTrainer`` on a tiny
random model (groups share a prefix, cuts agree across two torchrun processes, rewards see the whole response,
checkpoints restore the cache, evaluation samples the full path, bad settings name the field)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rpo_train.cache import CacheConfig, ExperienceCache
from rpo_train.cuts import TruncationConfig
from rpo_train.integrations.trl_rewards import correct_column, correctness, length_deltas
from rpo_train.integrations.trl_rows import PrefixSettings, groups_of, plan_rows, row_key, update_rows
from rpo_train.plan import suffix_budget
from rpo_train.rewards import length_aware

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "helpers" / "trl_worker.py"
SETTINGS = PrefixSettings(TruncationConfig(max_cut=6), CacheConfig(epsilon=0.5), "m", 40)


def filled_cache(n: int = 5) -> ExperienceCache:
    cache = ExperienceCache()
    for q in range(n):
        cache.put(f"q{q}", [1, q], list(range(10, 30 + q)), reward=0.0, correct=False, step=0)
    return cache


def plan(cache, key, prompt, settings, seed, round_index):
    return plan_rows(cache, [key], [prompt], settings, seed, round_index, {})[0]


# -- the rows' plan (no TRL) -------------------------------------------------------------------------------------
def test_a_plan_is_a_function_of_seed_round_and_key():
    cache = filled_cache()
    plans = [plan(cache, f"q{q}", [1, q], SETTINGS, 0, 4) for q in range(5)]
    assert plans == [plan(cache, f"q{q}", [1, q], SETTINGS, 0, 4) for q in range(5)]
    assert len({tuple(p.prefix) for p in plans}) > 1  # the cut differs between questions...
    other_rounds = [plan(cache, "q0", [1, 0], SETTINGS, 0, s).cut for s in range(1, 30)]
    assert len(set(other_rounds)) > 1  # ...and between rounds
    for p, q in zip(plans, range(5)):
        entry = cache.entries[f"q{q}"]
        assert 1 <= p.cut <= 6 and p.prefix == entry.response_ids[:entry.length - p.cut]
        assert p.budget == p.cut and p.refresh is None and p.reuses == 1 and not p.full_path


def test_plan_guards_init_budget_and_refresh():
    cache = filled_cache(1)
    assert plan(cache, "new", [9], SETTINGS, 0, 1).refresh == "init"  # lazy init: the full path
    tight = PrefixSettings(TruncationConfig(max_cut=0), CacheConfig(), 50, 21)
    p = plan(cache, "q0", [1, 0], tight, 0, 1)  # m = 0 is raised to 1; budget capped by max_len - prefix
    assert (p.cut, len(p.prefix), p.budget) == (1, 19, 2)
    auto = PrefixSettings(TruncationConfig(max_cut=6), CacheConfig(), "auto", 40)
    p = plan(cache, "q0", [1, 0], auto, 0, 1)  # auto: the room left, so that a suffix can finish
    assert p.budget == 40 - len(p.prefix)
    whole = PrefixSettings(TruncationConfig(max_cut=500), CacheConfig(), "auto", 40)
    cuts = [plan(cache, "q0", [1, 0], whole, 0, r) for r in range(1, 40)]
    assert any(c.full_path and c.refresh is None and c.budget == 40 for c in cuts)  # a cut of the whole response
    share = PrefixSettings(TruncationConfig(max_cut=6), CacheConfig(full_share=1.0), "m", 40)
    assert plan(cache, "q0", [1, 0], share, 0, 1).refresh == "share"
    with pytest.raises(ValueError, match="cached prompt differs"):
        plan(cache, "q0", [1, 2], SETTINGS, 0, 1)
    assert [suffix_budget(b, 5, 9) for b in ("m", "auto", 7, 20)] == [5, 9, 7, 9]
    with pytest.raises(ValueError, match="suffix budget"):
        suffix_budget(0, 5, 9)


def test_dynamic_cuts_follow_the_cached_length():
    cache = ExperienceCache()
    cache.put("long", [1], list(range(200)), reward=0.0, correct=False, step=0)
    cache.put("short", [2], list(range(20)), reward=0.0, correct=False, step=0)
    dyn = PrefixSettings(TruncationConfig(mode="dynamic", max_cut=0, factor=0.2), CacheConfig(), "auto", 400)
    long_cuts = [plan(cache, "long", [1], dyn, 0, r).cut for r in range(1, 200)]
    short_cuts = [plan(cache, "short", [2], dyn, 0, r).cut for r in range(1, 200)]
    assert max(long_cuts) == 40 and max(short_cuts) == 4  # L = 0.2 x the response length


def test_keys_and_groups():
    assert row_key({"id": 7}, [1, 2], "id") == "id:7"
    assert row_key({"x": 1}, [1, 2], None) == row_key({}, [1, 2], None) != row_key({}, [1, 3], None)
    with pytest.raises(ValueError, match="rpo_key_column='id'"):
        row_key({"x": 1}, [1], "id")
    assert groups_of(["a", "a", "b", "b"], 2) == [range(0, 2), range(2, 4)]
    with pytest.raises(ValueError, match="different questions"):
        groups_of(["a", "b", "b", "b"], 2)


def test_the_correct_reward_and_its_threshold_are_explicit():
    assert correct_column(["acc"], None) == 0
    assert correct_column(["fmt", "acc"], "acc") == 1 == correct_column(["fmt", "acc"], "1")
    with pytest.raises(ValueError, match="rpo_correct_reward must name the correctness reward"):
        correct_column(["fmt", "acc"], None)
    with pytest.raises(ValueError, match="rpo_correct_reward='x'"):
        correct_column(["fmt", "acc"], "x")
    assert correctness([0.0, 1.0, 0.3, float("nan")], None, "acc") == [False, True, True, False]
    with pytest.raises(ValueError, match="returned 3.0, outside \\[0, 1\\]: set RPOConfig.rpo_correct_threshold"):
        correctness([0.0, 3.0], None, "acc")
    assert correctness([0.0, 3.0, 2.0], 2.5, "acc") == [False, True, False]


def test_length_shaping_is_a_component_and_the_update_is_deterministic():
    values, lengths = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0], [10, 20, 30, 5, 6, 7]
    correct = [v > 0 for v in values]
    deltas = length_deltas(values, correct, lengths, 3, 0.1)
    shaped = length_aware(values[:3], correct[:3], lengths[:3], 0.1) + length_aware(values[3:], correct[3:],
                                                                                    lengths[3:], 0.1)
    assert [v + d for v, d in zip(values, deltas)] == pytest.approx(shaped)  # value + component = the paper's
    assert all(d == 0.0 for d, c in zip(deltas, correct) if not c) and min(deltas) < 0
    caches = [filled_cache(2), filled_cache(2)]
    keys = ["q0", "q0", "q1", "q1"]
    prompts = [[1, 0]] * 2 + [[1, 1]] * 2
    plans = plan_rows(caches[0], keys, prompts, SETTINGS, 0, 2, {})
    for cache in caches:
        update_rows(cache, keys, plans, prompts, [[1, 2], [3], [4, 5], [6]], [1.0, 0.0, 0.5, 0.5],
                    [True, False, False, False], 2, SETTINGS, 0, 2)
    assert caches[0].digest() == caches[1].digest()
    assert caches[0].entries["q0"].reuses == 1 and caches[0].entries["q0"].step == 2


# -- RPOTrainer ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def worker():
    from tests.helpers import trl_worker

    return trl_worker


@pytest.fixture(scope="module")
def model_dir(worker, tmp_path_factory):
    return worker.tiny_model(tmp_path_factory.mktemp("trl") / "model")


@pytest.mark.trl
def test_groups_share_one_prefix_and_rewards_see_the_whole_response(worker, model_dir, tmp_path):
    trainer, recorder = worker.build(tmp_path, model_dir, 3, rpo_suffix_budget="m", rpo_cache_init="eager")
    log = worker.traced(trainer)
    trainer.train()
    steps = [e for e in log if "keys" in e]
    assert len(steps) == 3 and len(trainer.rpo_cache) == worker.QUESTIONS  # the eager init drew every question
    assert trainer.rpo_state.init_tokens > 0 and trainer.rpo_state.init_mode == "eager"
    for entry, seen in zip(steps, recorder.seen[-3:]):
        for block in groups_of(entry["keys"], worker.GROUP):
            prefixes = {tuple(entry["prefixes"][i]) for i in block}
            assert len(prefixes) == 1 and entry["refresh"][block.start] is None
            prefix = list(prefixes.pop())
            assert 0 < len(prefix) and all(entry["completions"][i][:len(prefix)] == prefix for i in block)
        assert seen["ids"] == entry["completions"]  # the reward saw prefix + suffix ...
        tok = trainer.processing_class
        assert seen["completions"] == tok.batch_decode(entry["completions"], skip_special_tokens=True)
        assert "id" in seen["columns"] and len(seen["answer"]) == len(entry["keys"])  # ... and the dataset columns
    history = [h for h in trainer.state.log_history if "rpo/cut" in h]
    assert len(history) == 3 and all(h["rpo/cache_size"] == worker.QUESTIONS for h in history)
    assert all(0 < h["rpo/suffix_length"] <= 12 for h in history)


@pytest.mark.trl
def test_suffix_loss_masks_the_prefix_and_lazy_init_samples_one_response(worker, model_dir, tmp_path):
    """Lazy init: a round's uncached questions get ONE init response each, and the round cuts from it."""
    trainer, _ = worker.build(tmp_path, model_dir, 2, rpo_loss_tokens="suffix", rpo_cache_init="lazy")
    log = worker.traced(trainer)
    trainer.train()
    first = log[0]
    assert trainer.rpo_state.init_mode == "lazy" and len(trainer.rpo_cache) == len(set(
        k for e in log for k in e["keys"])) < worker.QUESTIONS
    assert all(r is None for r in first["refresh"]) and all(first["prefixes"])
    assert 0 < trainer.rpo_state.init_tokens < trainer.rpo_state.generated_tokens
    history = [h for h in trainer.state.log_history if "rpo/init_tokens" in h]
    assert history[-1]["rpo/init_tokens"] == trainer.rpo_state.init_tokens and history[-1]["rpo/init_s"] > 0
    for entry in log:
        for prefix, completion, mask in zip(entry["prefixes"], entry["completions"], entry["env_mask"]):
            assert mask == [0] * len(prefix) + [1] * (len(completion) - len(prefix))


@pytest.mark.trl
def test_full_path_rows_are_sampled_apart_from_the_suffixes(worker, model_dir, tmp_path):
    trainer, _ = worker.build(tmp_path, model_dir, 3, rpo_full_share=0.5, rpo_suffix_budget="m",
                              rpo_cache_init="eager")
    calls, generate = [], trainer._generate_single_turn

    def spy(prompt_ids, *args):
        calls.append((len(prompt_ids), trainer.generation_config.max_new_tokens))
        return generate(prompt_ids, *args)

    trainer._generate_single_turn = spy
    log = worker.traced(trainer)
    trainer.train()
    assert trainer.generation_config.max_new_tokens == 40  # the cap is restored after each call
    training = calls[-sum(len({p is None for p in e["refresh"]}) for e in log):]
    assert any(cap == 40 for _, cap in training) and any(cap <= 12 for _, cap in training)
    for entry in log:
        for refresh, prefix, completion in zip(entry["refresh"], entry["prefixes"], entry["completions"]):
            assert (refresh == "share") == (not prefix) and len(completion) - len(prefix) <= (40 if refresh else 12)


@pytest.mark.trl
def test_drift_refresh_probes_the_cache_and_keeps_writer_logprobs(worker, model_dir, tmp_path):
    """A tiny kl threshold after large updates: drifted entries run the full path; every entry then holds finite
    writer log-probs, and a kept prefix keeps the ones its own writer gave."""
    trainer, _ = worker.build(tmp_path, model_dir, 4, rpo_refresh_stat="kl", rpo_refresh_drift=1e-4,
                              learning_rate=0.05)
    log = worker.traced(trainer)
    written = {}
    update = trainer.rpo_cache.update_from_group

    def remember(qid, *args, **kwargs):
        written[qid] = list(trainer.rpo_cache.entries[qid].logprobs)
        return update(qid, *args, **kwargs)

    trainer.rpo_cache.update_from_group = remember
    trainer.train()
    for entry in trainer.rpo_cache.entries.values():
        assert entry.logprobs and all(x == x and x <= 0 for x in entry.logprobs)
    refreshed = [r for e in log for r in e["refresh"]]
    assert "drift" in refreshed and None in refreshed
    history = [h for h in trainer.state.log_history if "rpo/drift_kl_mean" in h]
    assert history and any(h["rpo/refreshes_drift"] > 0 for h in history)
    last = log[-1]
    for key, prefix, refresh in zip(last["keys"], last["prefixes"], last["refresh"]):
        entry = trainer.rpo_cache.entries[key]
        if refresh is None and entry.response_ids[:len(prefix)] == prefix and key in written:
            assert entry.logprobs[:len(prefix)] == written[key][:len(prefix)]


@pytest.mark.trl
def test_evaluation_samples_the_full_path(worker, model_dir, tmp_path):
    trainer, _ = worker.build(tmp_path, model_dir, 1)
    log = worker.traced(trainer)
    trainer.train()
    digest = trainer.rpo_cache.digest()
    trainer.evaluate()
    sampled = [tuple(p) for e in log if "eval_prompts" in e for p in e["eval_prompts"]]
    prompts = [list(map(int, p)) for p in trainer._tokenize_prompts(list(trainer.eval_dataset["prompt"]))[0]]
    assert sorted(sampled) == sorted(tuple(p) for p in prompts for _ in range(worker.GROUP))
    assert trainer.rpo_cache.digest() == digest
    logged = trainer.state.log_history[-1]
    assert 0.0 <= logged["eval_rpo/eval_mean_at_k"] <= logged["eval_rpo/eval_pass_at_k"] <= 1.0


@pytest.mark.trl
def test_checkpoint_resume_restores_the_cache_exactly(worker, model_dir, tmp_path):
    from rpo_train.integrations.trl import CACHE_FILE

    whole, _ = worker.build(tmp_path / "whole", model_dir, 4, save_strategy="steps", save_steps=2)
    log = worker.traced(whole)
    whole.train()
    saved = ExperienceCache.load(tmp_path / "whole" / "checkpoint-2" / CACHE_FILE)
    assert saved.digest() == log[1]["digest"]
    resumed, _ = worker.build(tmp_path / "whole", model_dir, 4, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-2"))
    assert resumed.rpo_cache.digest() == whole.rpo_cache.digest()
    assert resumed.rpo_state == whole.rpo_state and whole.rpo_state.rounds == 4
    (tmp_path / "whole" / "checkpoint-2" / CACHE_FILE).unlink()
    again, _ = worker.build(tmp_path / "whole", model_dir, 4)
    with pytest.raises(FileNotFoundError, match="rpo_cache.safetensors: missing"):
        again.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-2"))


@pytest.mark.trl
def test_cuts_agree_across_two_processes(worker, model_dir, tmp_path):
    """Per-device batch 4 with G = 8: each step's one group has 4 rows on each process; the drift refresh on (each
    process probes the same rows)."""
    out = tmp_path / "dist"
    out.mkdir()
    (out / "model").symlink_to(model_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), str(out), "3", "per_device_train_batch_size=4", "num_generations=8",
           'rpo_refresh_stat="kl"', "rpo_refresh_drift=1e-4", "learning_rate=0.05"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert all(r["shared_state"] == "on" and r["shared"] and min(r["shared"]) == 1.0 for r in ranks)  # self-check
    for a, b in zip(ranks[0]["log"], ranks[1]["log"]):
        assert a["digest"] == b["digest"] and a["keys"] == b["keys"]  # every group spans both processes
        assert a["prefixes"] == b["prefixes"] and a["cuts"] == b["cuts"] and a["refresh"] == b["refresh"]
        assert a["completions"] != b["completions"]  # each process sampled its own suffixes


@pytest.mark.trl
@pytest.mark.parametrize("field,value,match", [
    ("rpo_truncation", "sometimes", "RPOConfig.rpo_truncation must be auto or one of"),
    ("rpo_max_cut", -1, r"RPOConfig.rpo_max_cut must be one of \('auto',\) or an int >= 0, got -1"),
    ("rpo_max_cut", "3OO", "RPOConfig.rpo_max_cut must be one of"),
    ("rpo_suffix_budget", 0, "RPOConfig.rpo_suffix_budget must be one of"),
    ("rpo_min_cut", "eight", "RPOConfig.rpo_min_cut must be an int, got 'eight'"),
    ("rpo_truncation", "fixed", "RPOConfig.rpo_truncation must be auto or dynamic when rpo_max_cut is 'auto'"),
    ("rpo_cache_epsilon", 1.5, r"RPOConfig.rpo_cache_epsilon must be in \[0, 1\]"),
    ("rpo_loss_tokens", "prefix", "RPOConfig.rpo_loss_tokens must be one of"),
    ("rpo_cache_init", "never", "RPOConfig.rpo_cache_init must be one of"),
    ("rpo_full_share", 2.0, "RPOConfig.rpo_full_share"),
    ("rpo_refresh_stat", "entropy", "RPOConfig.rpo_refresh_stat must be one of"),
])
def test_bad_settings_name_the_field(worker, field, value, match, tmp_path):
    from rpo_train.integrations.trl import RPOConfig

    with pytest.raises(ValueError, match=match):
        RPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **{field: value})


@pytest.mark.trl
def test_unsupported_uses_and_versions_are_refused(worker, model_dir, tmp_path):
    from rpo_train.integrations.trl import RPOTrainer
    from rpo_train.integrations.trl_config import check_trl_version

    with pytest.raises(ImportError, match=r"tested with trl>=1.16,<1.17.*found trl 1.15.2"):
        check_trl_version("1.15.2")
    with pytest.raises(ImportError, match="found trl 1.17.0"):
        check_trl_version("1.17.0")
    check_trl_version("1.16.0")
    with pytest.raises(ValueError, match="rollout_func is not supported"):
        RPOTrainer(model=str(model_dir), reward_funcs=[len], args=None, rollout_func=lambda p, t: {})
    with pytest.raises(TypeError, match="args must be an RPOConfig"):
        RPOTrainer(model=str(model_dir), reward_funcs=[len], args=None)
    with pytest.raises(ValueError, match="rpo_correct_reward='1' is neither the name nor the index"):
        worker.build(tmp_path, model_dir, 1, rpo_correct_reward=1)
    with pytest.raises(ValueError, match="rpo_key_column='qid': the train dataset has no such column"):
        worker.build(tmp_path, model_dir, 1, rpo_key_column="qid")


@pytest.mark.trl
def test_keys_and_typed_fields_are_checked_before_any_sampling(worker, model_dir, tmp_path):
    from datasets import Dataset

    from rpo_train.integrations.trl import RPOConfig

    assert RPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", rpo_max_cut="300",
                     rpo_suffix_budget="64", rpo_min_cut="4").rpo_max_cut == 300
    rows = Dataset.from_list([{"prompt": "a", "id": 1}, {"prompt": "b", "id": 2}, {"prompt": "c", "id": 1}])
    with pytest.raises(ValueError, match="rpo_key_column='id': rows 0 and 2 share the value 1 but have different"):
        worker.build(tmp_path, model_dir, 1, rows=rows, rpo_key_column="id")
    same = Dataset.from_list([{"prompt": "a", "id": 1}, {"prompt": "a", "id": 1}, {"prompt": "b", "id": 2}])
    worker.build(tmp_path, model_dir, 1, rows=same, rpo_key_column="id")  # a repeated row is one question


def test_the_rows_module_needs_no_trl():
    code = ("import sys; sys.modules['trl'] = None; import rpo_train.integrations.trl_rows, rpo_train.cli; "
            "import rpo_train.integrations.trl")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "needs TRL: pip install -e '.[trl]'" in proc.stderr



@pytest.mark.trl
def test_the_bundled_warm_model_trains_through_rpotrainer(worker, tmp_path):
    """The bundled recurrence task's warm model (built on first use, about 2 minutes): its cached responses have the
    task's shape, the reward sees right and wrong whole responses, and the guard's statistics are logged."""
    from transformers import AutoTokenizer

    from rpo_train.data.config import BundledData
    from rpo_train.rewards import exact_answer_reward
    from rpo_train.task.warmstart import ensure_warm_model

    data = BundledData(task="recurrence", n_train=400, n_test=200)
    path = ensure_warm_model("tiny-recurrence", data)
    tok = AutoTokenizer.from_pretrained(path)
    trainer, recorder = worker.build(tmp_path, path, 2, per_device_train_batch_size=64, num_generations=8,
                                     max_completion_length=280, temperature=0.7, learning_rate=2e-4,
                                     rpo_refresh_drift=1.0, rpo_max_cut=30, rows=worker.dataset(tok, 16, data))
    trainer.train()
    cached = [tok.decode(e.response_ids, skip_special_tokens=True) for e in trainer.rpo_cache.entries.values()]
    assert len(cached) == 16 and all(re.match(r"\d\d:\d\+\d=\d;", r) for r in cached)  # the task's steps ...
    assert sum("Answer: " in r for r in cached) >= 8  # ... and closings (a suffix cut at its budget m may lack one)
    verdicts = {exact_answer_reward({"answer": a}, c).correct for call in recorder.seen
                for c, a in zip(call["completions"], call["answer"])}
    assert verdicts == {True, False}
    assert [h for h in trainer.state.log_history if "rpo/drift_flips_mean" in h]

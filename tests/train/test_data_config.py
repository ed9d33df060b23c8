"""The ``data:`` section, one type per source (``rpo_train.data.config``), the per-question object
(``rpo_train.data.Question``), and checkpoints written by the former flat ``DataConfig``, which still resume."""

from __future__ import annotations

import json

import pytest

from rpo_train.config import RunConfig, load_recipe
from rpo_train.data import Question, load_questions, question_id
from rpo_train.data.config import FLAT_DEFAULTS, BundledData, FileData, GymData, saved_data_section
from rpo_train.runtime.errors import UsageError
from rpo_train.task.tokenizer import build_tokenizer, make_tiny_checkpoint
from tests.helpers.train_configs import config, latest_state_file, ones_reward


def test_each_task_builds_its_own_section():
    assert type(load_recipe("tiny-cpu").data) is BundledData
    assert type(load_recipe("smollm2-135m-cpu").data) is GymData
    assert type(load_recipe("qwen2.5-math-1.5b-gpu").data) is FileData
    assert RunConfig(model="m").data == BundledData() == load_recipe("tiny-cpu").data  # the default recipe's data
    assert BundledData().task == "recurrence"


def test_an_override_that_changes_the_source_keeps_what_the_new_source_takes():
    files = load_recipe("tiny-cpu", ["data.task=hf", "data.path=x.jsonl"]).data
    assert files == FileData(path="x.jsonl")  # the recipe's terms, n_train, ... described the replaced source
    gym = load_recipe("tiny-cpu", ["data.task=reasoning_gym", "data.name=basic_arithmetic"]).data
    assert (gym.name, gym.n_train, gym.n_test, gym.seed) == ("basic_arithmetic", 400, 200, 1234)  # shared keys stay
    addition = load_recipe("tiny-cpu", ["data.task=addition"]).data  # the same source: every key stays
    assert addition == BundledData(task="addition", terms=17, n_train=400, n_test=200, seed=1234)


@pytest.mark.parametrize("overrides,message", [
    (["data.task=hf", "data.path=x", "data.terms=3"],
     "data.terms is not a key of data.task hf (a key of data.task addition/recurrence/recurrence_sum); "
     "data.task hf takes ['task', 'path', 'test_path', 'split', 'test_split', 'prompt_field', 'answer_field', "
     "'id_field']"),
    (["data.prompt_field=q"], "data.prompt_field is not a key of data.task recurrence (a key of data.task hf)"),
    (["data.name=chain_sum"], "data.name is not a key of data.task recurrence (a key of data.task reasoning_gym)"),
    (["data.colour=3"], "data.colour is not a key of data.task recurrence; data.task recurrence takes ['task', "),
    (["data.task=jsonl"], "data.task 'jsonl' is now 'hf'"),
    (["data.task=csv"], "data.task must be one of ('addition', 'recurrence', 'recurrence_sum', 'hf', "),
    (["data.task=hf"], "data.path is required when data.task is 'hf'"),
    (["data.terms=1"], "data.terms must be in [2, 89]"),  # the bundled task's own check, on construction
    (["data.n_train=1.5"], "data.n_train must be an int, got 1.5"),
])
def test_a_key_of_another_source_or_a_bad_value_is_named(overrides, message):
    with pytest.raises(UsageError) as err:
        load_recipe("tiny-cpu", overrides)
    assert message in str(err.value)


def test_a_recipe_file_with_a_foreign_key_is_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\ndata: {task: addition, digits: 3, path: data.jsonl}\n")
    with pytest.raises(UsageError, match=r"data.path is not a key of data.task addition \(a key of data.task hf\)"):
        load_recipe(str(recipe))


def old_flat(**values) -> dict:
    """A data section as the flat ``DataConfig`` saved it: all 18 fields."""
    return {**FLAT_DEFAULTS, **values}


def test_an_old_flat_section_reads_as_its_sources_section():
    old = old_flat(task="recurrence", n_train=400)
    assert len(old) == 18
    assert saved_data_section(old) == {"task": "recurrence", "n_train": 400, "n_test": 200, "digits": 5, "terms": 17,
                                       "seed": 1234}
    files = saved_data_section(old_flat(task="hf", path="d.jsonl", id_field="uid"))
    assert files == {**RunConfig(model="m", data=FileData(path="d.jsonl", id_field="uid")).to_dict()["data"]}
    gym = saved_data_section(old_flat(task="reasoning_gym", name="chain_sum", n_train=50))
    assert gym == RunConfig(model="m", data=GymData(name="chain_sum", n_train=50)).to_dict()["data"]
    # a field of another source away from its old default was a setting of that run: kept, so a resume refuses it
    assert saved_data_section(old_flat(task="recurrence", prompt_field="problem"))["prompt_field"] == "problem"
    # a section saved by this version, with a setting added later missing, gets that setting's default
    assert saved_data_section({"task": "addition", "digits": 3})["n_train"] == BundledData().n_train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", hidden=32, max_positions=96)


def test_a_checkpoint_of_the_flat_data_config_resumes_and_a_changed_setting_does_not(checkpoint, tmp_path):
    from rpo_train.trainer import Trainer

    cfg = config(checkpoint, tmp_path, steps=1, save_every=1)
    first = Trainer(cfg, reward_fn=ones_reward)
    first.train()
    state_path = latest_state_file(tmp_path)
    state = json.loads(state_path.read_text())
    data = cfg.data
    state["config"]["data"] = old_flat(task="addition", digits=data.digits, n_train=data.n_train, n_test=data.n_test,
                                       seed=data.seed, terms=17)  # as the former flat DataConfig wrote it
    state_path.write_text(json.dumps(state))
    resumed = Trainer(cfg, reward_fn=ones_reward)
    assert resumed.resume() and resumed.run.step == 1
    assert resumed.cache.digest() == first.cache.digest() and len(resumed.cache) > 0
    assert set(resumed.cache.entries) <= {q.qid for q in resumed.train_questions}  # the cache's keys: the qids
    state["config"]["data"]["answer_field"] = "solution"  # a file setting that run had changed
    state_path.write_text(json.dumps(state))
    with pytest.raises(UsageError, match="config section 'data' differs"):
        Trainer(cfg, reward_fn=ones_reward).resume()


def test_questions_carry_their_prompt_ids_and_the_cache_key_of_before():
    # the key of a prompt is the one caches and checkpoints were written with: sha1 of its ids, 20 hex digits
    assert question_id([1, 2, 3]) == "a01eda32e4e0b1393274"
    tok = build_tokenizer()
    train, test = load_questions(BundledData(task="addition", digits=2, n_train=3, n_test=2, seed=5), tok)
    assert len(train) == 3 and len(test) == 2 and all(isinstance(q, Question) for q in train + test)
    q = train[0]
    assert q.prompt_ids == [tok.bos_token_id] + tok.encode(q.prompt, add_special_tokens=False)
    assert q.qid == question_id(q.prompt_ids) and q.id.startswith("add-") and q.entry is None
    assert q.answer == str(sum(map(int, q.prompt.rstrip("=").split("+"))))
    with pytest.raises(AttributeError):
        q.answer = "0"  # frozen: built once at the run's start

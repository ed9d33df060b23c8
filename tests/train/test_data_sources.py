"""Data through 🤗 datasets (JSONL, CSV, parquet, folders, save_to_disk) and reasoning-gym: the same rows from every
format, nested and chat-message fields, splits, errors that name the file, row and field, and reasoning-gym's own
scorer as the reward."""

from __future__ import annotations

import importlib.util
import json

import pytest

from rpo_train.data import Question, encode_prompt, load_rows
from rpo_train.data.config import FileData, GymData
from rpo_train.runtime.errors import UsageError

RECORDS = [{"uid": f"q{i}", "meta": {"q": f"What is {i} + {i}?"}, "answer": str(2 * i)} for i in range(30)]


def write_all(folder):
    """The same records as JSONL, CSV, parquet, a folder of JSONL parts and a save_to_disk folder with two splits."""
    from datasets import Dataset, DatasetDict

    folder.mkdir(exist_ok=True)
    flat = [{"uid": r["uid"], "question": r["meta"]["q"], "answer": r["answer"]} for r in RECORDS]
    (folder / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    Dataset.from_list(flat).to_csv(str(folder / "d.csv"), index=False)
    Dataset.from_list(RECORDS).to_parquet(str(folder / "d.parquet"))
    parts = folder / "parts"
    parts.mkdir(exist_ok=True)
    (parts / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS[:12]))
    (parts / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS[12:]))
    DatasetDict({"train": Dataset.from_list(RECORDS[:24]), "test": Dataset.from_list(RECORDS[24:])}).save_to_disk(
        str(folder / "arrow"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    pytest.importorskip("datasets", reason="datasets is a dependency of rpo: pip install -e .")
    folder = tmp_path_factory.mktemp("data")
    write_all(folder)
    return folder


def rows_of(**kw):
    train, test = load_rows(FileData(prompt_field="meta.q", id_field="uid", **kw))
    return [(r["id"], r["question"], r["answer"]) for r in train], [(r["id"], r["question"], r["answer"]) for r in test]


def test_every_format_gives_the_jsonl_rows(files):
    want = rows_of(path=str(files / "d.jsonl"))
    assert len(want[0]) == 27 and len(want[1]) == 3 and want[0][0] == ("q3", "What is 3 + 3?", "6")
    assert rows_of(path=str(files / "d.parquet")) == want
    assert rows_of(path=str(files / "parts")) == want
    flat = load_rows(FileData(path=str(files / "d.csv"), id_field="uid"))
    assert [(r["id"], r["question"], r["answer"]) for r in flat[0]] == want[0]
    train, test = rows_of(path=str(files / "arrow"), test_split="test")
    assert train == [r for r in want[1] + want[0] if int(r[0][1:]) < 24] and [r[0] for r in test] == [
        f"q{i}" for i in range(24, 30)]


def test_a_parquet_file_trains_like_the_jsonl_file(files, tmp_path):
    from rpo_train.task.tokenizer import make_tiny_checkpoint
    from rpo_train.trainer import Trainer
    from tests.helpers.train_configs import config, ones_reward

    ckpt = make_tiny_checkpoint(tmp_path / "tiny", hidden=32, max_positions=96)
    losses = []
    for name in ("d.jsonl", "d.parquet"):
        cfg = config(ckpt, tmp_path / name, steps=1)
        import dataclasses

        cfg = dataclasses.replace(cfg, data=FileData(path=str(files / name), prompt_field="meta.q"))
        Trainer(cfg, reward_fn=ones_reward).train()
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses.append({k: v for k, v in rows[1].items() if not k.startswith("time/")})
    assert losses[0] == losses[1]


def test_chat_messages_prompts_use_the_chat_template(tmp_path):
    from rpo_train.task.tokenizer import build_tokenizer

    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "1+1="}], "answer": "2"}) + "\n")
    train, _ = load_rows(FileData(path=str(path), test_path=str(path), prompt_field="messages"))
    assert train[0]["question"][1] == {"role": "user", "content": "1+1="}
    tok = build_tokenizer()
    with pytest.raises(UsageError, match="no chat template"):
        encode_prompt(tok, train[0]["question"])
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}={% endif %}")
    assert encode_prompt(tok, train[0]["question"]) == tok.encode("Be brief.1+1==", add_special_tokens=False)


@pytest.mark.parametrize("kw,match", [
    (dict(path="d.jsonl", answer_field="solution"), r"d.jsonl: row 1 has no field 'solution' \(data.answer_field\)"),
    (dict(path="d.jsonl", prompt_field="meta.text"), r"row 1 has no field 'meta.text'"),
    (dict(path="arrow", split="validation"), r"no split 'validation'; it has \['test', 'train'\] \(data.split\)"),
    (dict(path="nowhere.parquet"), r"data.path=.*nowhere.parquet: no such file"),
    (dict(path="d.jsonl", test_path="missing.csv"), r"data.test_path=.*missing.csv: no such file"),
])
def test_bad_files_and_fields_are_named(files, kw, match):
    kw = {k: str(files / v) if k.endswith("path") else v for k, v in kw.items()}
    with pytest.raises(UsageError, match=match):
        load_rows(FileData(**{"prompt_field": "meta.q", **kw}))


gym = pytest.mark.skipif(importlib.util.find_spec("reasoning_gym") is None,
                         reason="reasoning-gym is not installed (pip install reasoning-gym, or the dev extra)")


@gym
def test_reasoning_gym_rows_are_seeded_disjoint_and_scored_by_the_dataset():
    from rpo_train.data.gym import gym_reward

    cfg = GymData(name="basic_arithmetic", options={"min_terms": 2, "max_terms": 3}, n_train=40, n_test=10, seed=3)
    train, test = load_rows(cfg)
    assert (train, test) == load_rows(cfg) and len(train) == 40 and len(test) == 10
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert train[0]["question"].endswith("Give your final answer between <answer> and </answer>.")
    reward = gym_reward(cfg)
    row = train[0]
    question = Question("qid", row["id"], row["question"], row["answer"], [1], row["entry"])  # what the reward gets
    assert reward(question, f"thinking...<answer>{row['answer']}</answer>").correct
    wrong = reward(question, "<answer>not a number</answer>")
    assert not wrong.correct and wrong.reward < 1.0
    line = GymData(name="basic_arithmetic", answer_format="line", n_train=5, n_test=2,
                   prompt_template="{question} End with 'Answer: X'.")
    assert gym_reward(line)(question, f"so\nAnswer: {row['answer']}").correct


@gym
def test_reasoning_gym_mix_and_its_errors():
    mix = GymData(mix={"basic_arithmetic": 2.0, "chain_sum": 1.0}, n_train=60, n_test=10)
    train, _ = load_rows(mix)
    sources = {r["entry"]["metadata"]["source_dataset"] for r in train}
    assert sources == {"basic_arithmetic", "chain_sum"}
    with pytest.raises(UsageError, match="'no_such_set' is not a reasoning-gym dataset"):
        load_rows(GymData(name="no_such_set", n_train=5, n_test=2))
    with pytest.raises(UsageError, match="data.options do not fit"):
        load_rows(GymData(name="basic_arithmetic", options={"colour": 3}, n_train=5, n_test=2))
    with pytest.raises(UsageError, match="exactly one of data.name"):
        GymData()
    with pytest.raises(UsageError, match="reward 'task'"):
        from rpo_train.config import RunConfig

        RunConfig(model="m", reward="task")

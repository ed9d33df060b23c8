"""Procedural reasoning tasks from reasoning-gym (an optional extra; it generates its data offline).

``data.task: reasoning_gym`` with ``data.name`` (any of its datasets) and ``data.options`` (that dataset's config,
e.g. its difficulty), or ``data.mix`` ({name: weight}, with ``data.options`` as {name: config}) to compose several in
one run through reasoning-gym's own composite dataset. Train and held-out questions come from different seeds
(``data.seed`` and one derived from it far away), held-out ones that repeat a training question dropped. The prompt is
``data.prompt_template`` with ``{question}``; ``reward: task`` scores a response with the dataset's own
``score_answer`` on the answer it states: between <answer> tags (``data.answer_format: tag``, reasoning-gym's
convention) or on a last ``Answer: ...`` line (``line``).
"""

from __future__ import annotations

import importlib.util

from ..rewards import RewardResult, final_answer
from ..runtime.errors import UsageError, one_line
from ..runtime.seeding import derive_seed


def _require_gym():
    if importlib.util.find_spec("reasoning_gym") is None:
        raise UsageError("data.task=reasoning_gym needs reasoning-gym, which is not installed (pip install "
                         "reasoning-gym, or the project's dev extra)")
    import reasoning_gym

    return reasoning_gym


def _specs(cfg) -> list[tuple[str, float, dict]]:
    """(name, weight, options) of every dataset the config names, checked against reasoning-gym's registry."""
    from reasoning_gym.factory import DATASETS

    if cfg.mix:
        specs = [(str(name), float(weight), dict(cfg.options.get(name, {}))) for name, weight in cfg.mix.items()]
        unknown_options = sorted(set(cfg.options) - set(cfg.mix))
        if unknown_options:
            raise UsageError(f"data.options names {unknown_options}, which data.mix does not; with a mix, "
                             "data.options maps a dataset name to its config")
    else:
        specs = [(cfg.name, 1.0, dict(cfg.options))]
    for name, weight, options in specs:
        if name not in DATASETS:
            raise UsageError(f"data.{'mix' if cfg.mix else 'name'}: {name!r} is not a reasoning-gym dataset; some of "
                             f"its {len(DATASETS)}: {sorted(DATASETS)[:12]}")
        if not weight > 0:
            raise UsageError(f"data.mix: the weight of {name!r} must be > 0, got {weight}")
        if not isinstance(options, dict):
            raise UsageError(f"data.options for {name!r} must be a mapping of config keys, got {options!r}")
    return specs


def _composite(cfg, size: int, seed: int):
    gym = _require_gym()
    from reasoning_gym.composite import DatasetSpec

    specs = [DatasetSpec(name=n, weight=w, config=o) for n, w, o in _specs(cfg)]
    try:
        return gym.create_dataset("composite", size=size, seed=seed, datasets=specs)
    except (TypeError, ValueError, AssertionError) as exc:  # the dataset's own config check
        raise UsageError(f"data.options do not fit {[s.name for s in specs]}: {one_line(exc)}") from exc


def _row(entry: dict, split: str, index: int, template: str) -> dict:
    source = entry.get("metadata", {}).get("source_dataset", "gym")
    return {"id": f"{source}-{split}-{index}", "question": template.format(question=entry["question"]),
            "answer": str(entry["answer"]), "entry": entry}


def gym_rows(cfg) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows): ``n_train`` and ``n_test`` questions from disjoint seeds, no question in both."""
    train = [_row(e, "train", i, cfg.prompt_template) for i, e in enumerate(_composite(cfg, cfg.n_train, cfg.seed))]
    seen = {r["question"] for r in train}
    test: list[dict] = []
    for attempt in range(4):  # drop repeats of training questions; draw more when too many repeat
        # reasoning-gym draws item i from seed + i: a seed far from the training one, not the next one
        pool = _composite(cfg, (attempt + 2) * cfg.n_test, derive_seed(cfg.seed, "held-out", attempt) % 2**48)
        test = [r for r in (_row(e, "test", i, cfg.prompt_template) for i, e in enumerate(pool))
                if r["question"] not in seen][:cfg.n_test]
        if len(test) == cfg.n_test:
            return train, test
    raise UsageError(f"data: only {len(test)} held-out questions differ from the {cfg.n_train} training ones "
                     f"(data.n_test={cfg.n_test}); the dataset has too few distinct questions at these options")


def extract(text: str, answer_format: str) -> str | None:
    """The answer a response states: its last <answer>...</answer> ("tag") or last ``Answer:`` line ("line")."""
    if answer_format == "line":
        return final_answer(text)
    from reasoning_gym.utils import extract_answer

    return extract_answer(text)


def gym_reward(cfg):
    """``reward: task``: the dataset's own ``score_answer`` (in [0, 1]) of the answer a response states, against the
    question's reasoning-gym entry (``rpo_train.data.Question.entry``); correct at 1."""
    scorer = _composite(cfg, 1, cfg.seed)

    def reward(question, text: str) -> RewardResult:
        score = float(scorer.score_answer(extract(text, cfg.answer_format), question.entry))
        return RewardResult(score, score >= 1.0)

    return reward

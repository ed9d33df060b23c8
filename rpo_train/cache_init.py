"""The experience cache's init: one sampled response per training question (the paper's step 1), eager or lazy.

``cache.init``:

- ``eager``: every training question's response before the first step (``eager_init``), as the paper does;
- ``lazy``: a question's response when the question is first drawn (``LazyInit``), under the policy of that step,
  then its group is cut from it as any other. A run whose steps visit 320 of 400 questions samples 320 init
  responses instead of 400, and the first step starts at once instead of after a pass over the whole data;
- ``auto``: lazy when ``steps * batch_questions`` is below the number of training questions, else eager; decided
  when the run starts and kept in its checkpoints (a resume with more steps does not change it).

Whatever the mode, an RPO run initialises a drawn question that has no entry when it is drawn (a ``cache.init_path``
file without it, say).

Both draw question i's response from the same seed (run seed, attempt, i), so under the same weights lazy writes
exactly the entry eager would. The tokens sampled count as generated tokens of the run either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .cache import ExperienceCache
from .config import RunConfig
from .data import Question
from .groups import sample_and_score
from .rewards import RewardFn, format_reward
from .runtime.distributed import DistContext
from .runtime.seeding import derive_seed


def init_mode(setting: str, steps: int, batch_questions: int, n_train: int) -> str:
    """``cache.init`` resolved: "auto" is lazy when the run's ``steps * batch_questions`` draws are fewer than its
    ``n_train`` questions (some are never visited), else eager."""
    if setting != "auto":
        return setting
    return "lazy" if steps * batch_questions < n_train else "eager"


@dataclass(frozen=True)
class InitResponse:
    """One question's init: its response ids, reward, correctness, the sampler's log-probs, and every token
    sampled for it (retries of ``cache.resample_no_answer`` included)."""

    ids: list[int]
    reward: float
    correct: bool
    logprobs: list[float]
    generated: int


def sample_init(engine, questions: list[Question], indices: list[int], cfg: RunConfig, tokenizer,
                reward_fn: RewardFn, stop_ids: list[int], *, batch: int = 64,
                progress: bool = False) -> list[InitResponse]:
    """The init response of each question, ``questions[k]`` seeded from (run seed, attempt, ``indices[k]``), its
    place in the training data. With ``cache.resample_no_answer = k`` a response that states no final answer is sampled
    again, up to k more times (the last one is kept)."""
    from tqdm.auto import tqdm

    todo = list(range(len(questions)))
    found: dict[int, InitResponse] = {}
    for attempt in range(cfg.cache.resample_no_answer + 1):
        retry = []
        for start in tqdm(range(0, len(todo), batch), desc="cache init", leave=False, disable=not progress):
            part = todo[start:start + batch]
            params = cfg.rollout.sampling_params(
                cfg.rollout.max_response_len, seed=[derive_seed(cfg.seed, "init", attempt, indices[k]) for k in part],
                stop_token_ids=stop_ids)
            out = sample_and_score(engine, [questions[k] for k in part], params, tokenizer, reward_fn)
            for k, (s,) in zip(part, out):
                comp = s.completion
                spent = found[k].generated if k in found else 0
                found[k] = InitResponse(list(comp.token_ids), s.reward, s.correct, list(comp.logprobs),
                                        spent + len(comp.token_ids))
                if format_reward(questions[k], s.text).reward == 0:
                    retry.append(k)
        todo = retry
        if not todo:
            break
    return [found[k] for k in range(len(questions))]


def store(cache: ExperienceCache, questions: list[Question], found: list[InitResponse], cut_limit: float) -> None:
    """Put each question's init response in ``cache`` as written at step 0."""
    for q, f in zip(questions, found):
        cache.put(q.qid, q.prompt_ids, f.ids, reward=f.reward, correct=f.correct, step=0,
                  logprobs=f.logprobs, cut_limit=cut_limit)


def eager_init(engine, questions: list[Question], cfg: RunConfig, tokenizer, reward_fn: RewardFn,
               stop_ids: list[int], dist: DistContext) -> list[InitResponse]:
    """Every question's init response, each rank sampling its share; the same list on every rank."""
    mine = dist.share(list(range(len(questions))))
    found = sample_init(engine, [questions[i] for i in mine], mine, cfg, tokenizer, reward_fn, stop_ids,
                        progress=dist.is_main)
    merged = {i: f for part in dist.gather(dict(zip(mine, found))) for i, f in part.items()}
    return [merged[i] for i in range(len(questions))]


class LazyInit:
    """Writes the init entry of each drawn question that has none, on this rank, just before its group is planned.

    ``index`` maps a question id to its place in the training data (its init seed). What was sampled travels with
    the question's group (``Group.init``), so that every rank counts the same totals.
    """

    def __init__(self, train: list[Question]):
        self.index = {q.qid: i for i, q in enumerate(train)}

    def fill(self, cache: ExperienceCache, questions: list[Question], engine, cfg: RunConfig, tokenizer,
             reward_fn: RewardFn, stop_ids: list[int]) -> tuple[dict[str, tuple[int, int]], float]:
        """Sample and store the init of ``questions`` missing from ``cache``: ({question id: (tokens sampled, length
        of the stored response)}, seconds)."""
        start = time.perf_counter()
        missing, seen = [], set()
        for q in questions:
            if q.qid not in cache and q.qid not in seen:
                missing.append(q)
                seen.add(q.qid)
        if not missing:
            return {}, 0.0
        found = sample_init(engine, missing, [self.index[q.qid] for q in missing], cfg, tokenizer, reward_fn,
                            stop_ids)
        store(cache, missing, found, cfg.truncation.initial_limit())
        return ({q.qid: (f.generated, len(f.ids)) for q, f in zip(missing, found)},
                time.perf_counter() - start)

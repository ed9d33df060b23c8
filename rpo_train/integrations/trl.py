"""RPO inside Hugging Face TRL: ``RPOTrainer`` is a ``GRPOTrainer`` that samples suffixes of cached responses.

A TRL script switches RPO on by changing two names::

    from rpo_train.integrations.trl import RPOConfig, RPOTrainer
    trainer = RPOTrainer(model=..., reward_funcs=[...], args=RPOConfig(output_dir=..., rpo_max_cut=300),
                         train_dataset=ds)
    trainer.train()

How it sits in TRL (1.16): generation goes through TRL's ``rollout_func`` seam. For each row it plans a prefix
(``rpo_train.integrations.prefix_plan``: one cut per group, seeded by (seed, step, question key)), asks TRL's own
generation backend (transformers or vLLM) for the suffix of ``prompt + prefix`` and returns ``prefix + suffix`` as the
completion, so reward functions see the whole response and the dataset columns as under plain TRL. With
``rpo_loss_tokens="suffix"`` the prefix is masked from the loss through the ``env_mask`` TRL applies to tool output.
Rewards are gathered by TRL; then the correctness reward is length-shaped and every process makes the same
epsilon-greedy cache update. Evaluation samples the full path. The cache is saved as ``rpo_cache.safetensors`` (and
the token counters as ``rpo_state.json``) in every checkpoint folder and restored by ``resume_from_checkpoint``.
With ``rpo_refresh_drift`` set, every step first reads the step's cached responses under the current policy (one
no-grad forward, the same rows on every process) and refreshes those whose drift statistic reached it; the cache then
keeps the log-probs each token was written with. Logged beside TRL's metrics: ``rpo/suffix_length``, ``rpo/cut``,
``rpo/full_path_share``, ``rpo/cache_size``, ``rpo/generated_tokens`` (cumulative, cache init included), and the
guard's ``rpo/drift_*`` and ``rpo/refreshes_*``.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from pathlib import Path

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..cache import ExperienceCache
from ..drift import drift_metrics, measure
from ..model.policy import response_logprobs
from ..runtime.atomic import atomic_write
from .prefix_plan import plan_row, row_key, shape_lengths, step_metrics, update_cache
from .trl_config import GRPOTrainer, RPOConfig, gather_object

CACHE_FILE = "rpo_cache.safetensors"
STATE_FILE = "rpo_state.json"

__all__ = ["RPOConfig", "RPOTrainer"]


class RPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` with RPO's rollout; takes ``GRPOTrainer``'s arguments, with ``args`` an ``RPOConfig``.

    Not supported (a clear error): tools, environments, vision-language models and a ``rollout_func`` of one's own
    (RPO owns that seam). ``rpo_cache`` is the experience cache; ``rpo_counters`` the generated-token counts.
    """

    def __init__(self, *args, **kwargs):
        names = ("model", "reward_funcs", "args")
        given = dict(zip(names, args)) | kwargs
        if len(args) > len(names):
            raise TypeError("RPOTrainer: pass the arguments after model, reward_funcs and args by keyword")
        for name in ("rollout_func", "tools", "environment_factory"):
            if given.get(name):
                raise ValueError(f"RPOTrainer: {name} is not supported (RPO samples suffixes of cached responses "
                                 "through its own rollout_func)")
        if not isinstance(given.get("args"), RPOConfig):
            raise TypeError(f"RPOTrainer: args must be an RPOConfig, got {type(given.get('args')).__name__}")
        given["rollout_func"] = self._rpo_rollout
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="You are using 'rollout_func'")
            super().__init__(**given)
        if self._is_vlm:
            raise ValueError("RPOTrainer: vision-language models are not supported (cut points inside image tokens)")
        if self.args.rpo_correct_reward >= len(self.reward_funcs):
            raise ValueError(f"RPOConfig.rpo_correct_reward={self.args.rpo_correct_reward} but there are only "
                             f"{len(self.reward_funcs)} reward functions")
        self.rpo_settings = self.args.prefix_settings()
        self.rpo_cache = ExperienceCache()
        self.rpo_counters = {"init_tokens": 0, "init_s": 0.0, "generated_tokens": 0}
        self._rpo_rows: list[dict] | None = None
        self._rpo_pending: tuple | None = None

    # -- generation ----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _rpo_cap(self, max_new_tokens: int):
        """Set the backend's cap on new tokens to ``max_new_tokens`` for one call (suffixes are cut to their own
        budget afterwards, which draws from the same distribution as stopping there)."""
        target = (self.vllm_generation, "max_completion_length") if self.use_vllm else (self.generation_config,
                                                                                         "max_new_tokens")
        before = getattr(*target)
        setattr(*target, max_new_tokens)
        try:
            yield
        finally:
            setattr(*target, before)

    def _collective_generation(self) -> bool:
        """Whether a TRL generation call is collective (vLLM, gathered ZeRO-3 or FSDP weights): then every process
        must make the same calls."""
        return bool(self.use_vllm or self.is_deepspeed_enabled or self.is_fsdp_enabled)

    def _sample(self, prompt_ids: list[list[int]], budgets: list[int], n: int) -> tuple[list, list | None]:
        """Sample after each of ``prompt_ids`` with TRL's backend, row i cut to ``budgets[i]`` new tokens.

        Where generation is not collective, full-path rows are sampled apart from the suffixes, so that a short
        suffix does not decode on to the full length beside them; otherwise one call per process, capped at the
        largest budget of any process."""
        if self._collective_generation():
            parts, caps = [list(range(len(budgets)))], [max(gather_object([max(budgets)]))]
        else:
            full = [i for i, b in enumerate(budgets) if b >= self.max_completion_length]
            short = [i for i, b in enumerate(budgets) if b < self.max_completion_length]
            parts = [p for p in (full, short) if p]
            caps = [max(budgets[i] for i in p) for p in parts]
        ids: list = [None] * len(budgets)
        logprobs: list | None = [None] * len(budgets)
        for part, cap in zip(parts, caps):
            with self._rpo_cap(cap):
                got, got_logprobs = self._generate_single_turn([prompt_ids[i] for i in part], None, {}, n)
            for j, i in enumerate(part):
                ids[i] = [int(t) for t in got[j]][:budgets[i]]
                if got_logprobs is None:
                    logprobs = None
                elif logprobs is not None:
                    logprobs[i] = list(got_logprobs[j])[:budgets[i]]
        return ids, logprobs

    def _generate_and_score_completions(self, inputs):
        self._rpo_rows = inputs  # the dataset rows: rollout_func sees only the prompts
        return super()._generate_and_score_completions(inputs)

    def _rpo_rollout(self, prompts: list, trainer) -> dict:
        """TRL's rollout_func: the full path in evaluation, prefix + sampled suffix in training."""
        prompt_ids = [[int(t) for t in p] for p in self._tokenize_prompts(prompts)[0]]
        if not self.model.training:
            ids, logprobs = self._sample(prompt_ids, [self.max_completion_length] * len(prompt_ids),
                                         self.num_generations_eval)
            return {"prompt_ids": prompt_ids, "completion_ids": ids, "logprobs": logprobs}
        step = self.state.global_step + 1
        keys = [row_key(row, p, self.args.rpo_key_column) for row, p in zip(self._rpo_rows, prompt_ids)]
        drifts = self._rpo_probe(keys, prompt_ids)
        plans = [plan_row(self.rpo_cache, k, p, self.rpo_settings, self.args.seed, step, drifts.get(k))
                 for k, p in zip(keys, prompt_ids)]
        suffixes, logprobs = self._sample([p + plan.prefix for p, plan in zip(prompt_ids, plans)],
                                          [plan.budget for plan in plans], self.num_generations)
        completions = [plan.prefix + s for plan, s in zip(plans, suffixes)]
        if logprobs is not None:  # the prefix was not sampled now: NaN makes TRL's sampling correction skip it
            logprobs = [[float("nan")] * len(plan.prefix) + lp for plan, lp in zip(plans, logprobs)]
        self._rpo_pending = (plans, prompt_ids, completions, [len(s) for s in suffixes],
                             [drifts.get(plan.key) for plan in plans])
        out = {"prompt_ids": prompt_ids, "completion_ids": completions, "logprobs": logprobs}
        if self.args.rpo_loss_tokens == "suffix":
            out["env_mask"] = [[0] * len(plan.prefix) + [1] * len(s) for plan, s in zip(plans, suffixes)]
        return out

    # -- the drift guard ---------------------------------------------------------------------------------------
    def _rpo_logprobs(self, prompts: list[list[int]], responses: list[list[int]]) -> list[list[float]]:
        """The current policy's log-probs (at the sampling temperature) of each response token, in chunks of the
        per-device batch; every process runs the same chunks."""
        model = self.accelerator.unwrap_model(self.model)
        pad = self.processing_class.pad_token_id if self.processing_class.pad_token_id is not None else 0
        size = self.args.per_device_train_batch_size
        out: list[list[float]] = []
        for lo in range(0, len(prompts), size):
            out += [lp for lp, _ in response_logprobs(model, prompts[lo:lo + size], responses[lo:lo + size], pad,
                                                      self.temperature)]
        return out

    def _rpo_probe(self, keys: list[str], prompt_ids: list[list[int]]) -> dict:
        """key -> ``Drift`` of its cached response under the current policy, for every cached question of the
        step on any process (gathered, so every process measures the same rows the same way); empty when the
        drift refresh is off."""
        if not self.rpo_settings.cache.refresh_drift:
            return {}
        local = list({k: p for k, p in zip(keys, prompt_ids)}.items())
        rows = list({k: p for part in gather_object([local]) for k, p in part if k in self.rpo_cache}.items())
        entries = [self.rpo_cache.get(k, p) for k, p in rows]
        now = self._rpo_logprobs([e.prompt_ids for e in entries], [e.response_ids for e in entries])
        return {k: measure(e.logprobs, lp) for (k, _), e, lp in zip(rows, entries, now)}

    # -- scoring and the cache update ----------------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if not self.model.training or self._rpo_pending is None:
            return rewards_per_func
        local, self._rpo_pending = self._rpo_pending, None
        rows = [r for part in gather_object([list(zip(*local))]) for r in part]  # global, in TRL's row order
        plans, prompt_ids, responses, suffix_lengths, drifts = (list(x) for x in zip(*rows))
        col = self.args.rpo_correct_reward
        values = rewards_per_func[:, col].tolist()
        correct = [v > 0 for v in values]
        if self.args.rpo_length_aware:
            shaped = shape_lengths(values, [len(r) for r in responses], self.num_generations,
                                   self.args.rpo_length_alpha)
            rewards_per_func[:, col] = torch.tensor(shaped, dtype=rewards_per_func.dtype,
                                                    device=rewards_per_func.device)
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        totals = (rewards_per_func * weights).nansum(dim=1).tolist()
        step = self.state.global_step + 1
        writer = self._rpo_logprobs if self.rpo_settings.cache.refresh_drift else None  # weights not yet updated
        update_cache(self.rpo_cache, plans, prompt_ids, responses, totals, correct, self.num_generations,
                     self.rpo_settings, self.args.seed, step, writer)
        self.rpo_counters["generated_tokens"] += sum(suffix_lengths)
        metrics = step_metrics(plans, suffix_lengths, self.rpo_cache)
        metrics["rpo/generated_tokens"] = float(self.rpo_counters["generated_tokens"])
        firsts = range(0, len(plans), self.num_generations)  # one per group
        guard = drift_metrics([drifts[i] for i in firsts], [plans[i].refresh for i in firsts
                                                             if plans[i].refresh != "init"] or [None])
        metrics.update({"rpo/" + name.split("/", 1)[1]: value for name, value in guard.items()})
        for name, value in metrics.items():
            self._metrics["train"][name].append(value)
        return rewards_per_func

    # -- cache init ----------------------------------------------------------------------------------------------
    def rpo_init_cache(self, batch: int | None = None) -> None:
        """The paper's cache init: one response per training question from the current policy, before training.

        Each process samples its share of the distinct questions (with their log-probs when the drift refresh is
        on); the correctness reward function (when it is a plain function) scores them for the cache's metrics;
        every process then stores all of them."""
        start = time.perf_counter()
        data = self.train_dataset
        if not hasattr(data, "__len__"):
            raise ValueError("RPOConfig.rpo_cache_init='eager' needs a map-style train_dataset (an iterable one "
                             "has no end to initialise from); use rpo_cache_init='lazy'")
        rows = [data[i] for i in range(len(data))]
        prompt_ids = [[int(t) for t in p] for p in self._tokenize_prompts([r["prompt"] for r in rows])[0]]
        keys = [row_key(r, p, self.args.rpo_key_column) for r, p in zip(rows, prompt_ids)]
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        todo = list(first.values())  # one row per distinct question, in dataset order
        share = -(-len(todo) // self.accelerator.num_processes)
        mine = todo[self.accelerator.process_index * share:(self.accelerator.process_index + 1) * share]
        batch = batch or self.args.per_device_train_batch_size
        found = []
        for lo in range(0, share, batch):  # the same number of calls on every process (generation may be collective)
            part = mine[lo:lo + batch]
            asked = [prompt_ids[i] for i in part or todo[:1]]
            ids, _ = self._sample(asked, [self.max_completion_length] * len(asked), 1)
            logprobs = self._rpo_logprobs(asked, ids) if self.rpo_settings.cache.refresh_drift else [[]] * len(ids)
            if not part:
                continue
            correct = self._init_correct([rows[i] for i in part], ids)
            found += list(zip(part, ids, correct, logprobs))
        for i, response, ok, logprobs in sorted(x for part in gather_object([found]) for x in part):
            self.rpo_cache.put(keys[i], prompt_ids[i], response, reward=float(ok), correct=ok, step=0,
                               logprobs=logprobs, cut_limit=self.rpo_settings.truncation.initial_limit())
            self.rpo_counters["init_tokens"] += len(response)
        self.rpo_counters["generated_tokens"] += self.rpo_counters["init_tokens"]
        self.rpo_counters["init_s"] = time.perf_counter() - start

    def _init_correct(self, rows: list[dict], ids: list[list[int]]) -> list[bool]:
        func = self.reward_funcs[self.args.rpo_correct_reward]
        if isinstance(func, torch.nn.Module) or not callable(func):
            return [False] * len(rows)
        texts = self.processing_class.batch_decode(ids, skip_special_tokens=True)
        if rows and isinstance(rows[0]["prompt"], list):
            texts = [[{"role": "assistant", "content": t}] for t in texts]
        columns = {k: [r[k] for r in rows] for k in rows[0] if k not in ("prompt", "completion")} if rows else {}
        values = func(prompts=[r["prompt"] for r in rows], completions=texts, completion_ids=ids,
                      trainer_state=self.state, log_extra=lambda *a, **k: None, log_metric=lambda *a, **k: None,
                      **columns)
        return [v is not None and v > 0 for v in values]

    def train(self, resume_from_checkpoint=None, **kwargs):
        if not resume_from_checkpoint and self.args.rpo_cache_init == "eager" and not len(self.rpo_cache):
            self.rpo_init_cache()
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        if self.args.should_save:  # written first: a folder with weights always has its cache
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            self.rpo_cache.save(folder / CACHE_FILE)
            atomic_write(folder / STATE_FILE, lambda tmp: Path(tmp).write_text(json.dumps(self.rpo_counters)))
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = Path(checkpoint) / CACHE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; resume_from_checkpoint needs a checkpoint written by "
                                    "RPOTrainer (it saves the experience cache there)")
        self.rpo_cache = ExperienceCache.load(path)
        state = Path(checkpoint) / STATE_FILE
        if state.is_file():
            self.rpo_counters.update(json.loads(state.read_text()))


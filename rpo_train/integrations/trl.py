"""RPO inside Hugging Face TRL: ``RPOTrainer`` is a ``GRPOTrainer`` that samples suffixes of cached responses.

A TRL script switches RPO on by changing two names::

    from rpo_train.integrations.trl import RPOConfig, RPOTrainer
    trainer = RPOTrainer(model=..., reward_funcs=[...], args=RPOConfig(output_dir=...), train_dataset=ds)
    trainer.train()

How it sits in TRL (1.16): generation goes through TRL's ``rollout_func`` seam, once per generation round (every
``steps_per_generation x num_iterations`` micro-steps). For each row it plans a prefix with the rules rpo-train uses
(``rpo_train.plan``, over TRL's rows in ``rpo_train.integrations.trl_rows``: one cut per group, seeded by (seed,
round, question key)), asks TRL's own generation backend (transformers, or vLLM with a budget per request) for the
suffix of ``prompt + prefix`` and returns ``prefix + suffix`` as the completion, so reward functions see the whole
response and the dataset columns as under plain TRL. By default a suffix may run to ``max_completion_length``, so
TRL's ``completions/clipped_ratio`` and ``mask_truncated_completions`` keep their GRPO meaning. With
``rpo_loss_tokens="suffix"`` the prefix is masked from the loss through the ``env_mask`` TRL applies to tool output.

Rewards reach TRL as the user's functions returned them (``rpo_train.integrations.trl_rewards``): the correctness
reward marks responses correct for the cache, and the length-aware shaping, when on, is a reward component of its
own. Every process then makes the same epsilon-greedy cache update. Evaluation samples the full path. The cache is
saved as ``rpo_cache.safetensors`` and the run state (generation rounds, init mode, token counters) as
``rpo_state.json`` in every checkpoint folder, and both are restored by ``resume_from_checkpoint``. With
``rpo_refresh_drift`` set (the default), every round first reads the round's cached responses under the current
policy (one no-grad forward through the model's own forward, so LoRA and other wrappers work) and refreshes those
whose drift statistic reached it; the cache keeps the log-probs each token was written with. Logged beside TRL's
metrics: ``rpo/round``, ``rpo/suffix_length``, ``rpo/cut``, ``rpo/full_path_share``, ``rpo/cache_size``,
``rpo/generated_tokens`` (cumulative, cache init included), ``rpo/init_tokens``, ``rpo/init_s``, and the guard's
``rpo/drift_*`` and ``rpo/refreshes_*``.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..cache import ExperienceCache
from ..drift import drift_metrics, measure
from ..evaluation import pass_at_k
from ..model.policy import response_logprobs
from .trl_config import GRPOTrainer, RPOConfig, gather_object
from .trl_init import eager_init, init_rows, resolve_init_mode
from .trl_rewards import LENGTH_COMPONENT, correct_column, correctness, length_deltas, rpo_length
from .trl_rows import RPOTrainerState, check_key_column, plan_rows, round_metrics, row_key, update_rows
from .trl_shared import SharedForwardMixin
from .trl_vllm import vllm_generate

CACHE_FILE = "rpo_cache.safetensors"
STATE_FILE = "rpo_state.json"

__all__ = ["RPOConfig", "RPOTrainer"]


class RPOTrainer(SharedForwardMixin, GRPOTrainer):
    """``GRPOTrainer`` with RPO's rollout; takes ``GRPOTrainer``'s arguments, with ``args`` an ``RPOConfig``.

    Not supported (a clear error): tools, environments, vision-language models and a ``rollout_func`` of one's own
    (RPO owns that seam). ``rpo_cache`` is the experience cache; ``rpo_state`` the run state (``RPOTrainerState``).
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
        self.rpo_correct_index = correct_column(self.reward_func_names, self.args.rpo_correct_reward)
        if self.args.rpo_length_aware:  # its own column, with the correctness reward's weight
            self.reward_funcs.append(rpo_length)
            self.reward_func_names.append(LENGTH_COMPONENT)
            self.reward_processing_classes.append(None)
            weight = self.reward_weights[self.rpo_correct_index:self.rpo_correct_index + 1]
            self.reward_weights = torch.cat([self.reward_weights, weight])
        check_key_column(self.train_dataset, self.args.rpo_key_column)
        self.rpo_settings = self.args.prefix_settings()
        self.rpo_cache = ExperienceCache()
        self.rpo_state = RPOTrainerState()
        self._rpo_rows: list[dict] | None = None
        self._rpo_pending: tuple | None = None

    # -- generation ----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _rpo_cap(self, max_new_tokens: int):
        """Set transformers' cap on new tokens to ``max_new_tokens`` for one call (suffixes are cut to their own
        budget afterwards, which draws from the same distribution as stopping there)."""
        before = self.generation_config.max_new_tokens
        self.generation_config.max_new_tokens = max_new_tokens
        try:
            yield
        finally:
            self.generation_config.max_new_tokens = before

    def _collective_generation(self) -> bool:
        """Whether a transformers generation call is collective (gathered ZeRO-3 or FSDP weights): then every
        process must make the same calls."""
        return bool(self.is_deepspeed_enabled or self.is_fsdp_enabled)

    def _sample(self, prompt_ids: list[list[int]], budgets: list[int], n: int) -> tuple[list, list | None]:
        """Sample after each of ``prompt_ids`` with TRL's backend, row i cut to ``budgets[i]`` new tokens.

        vLLM takes a budget per request (``rpo_train.integrations.trl_vllm``). With transformers, where generation
        is not collective, full-path rows are sampled apart from the suffixes, so that a short
        suffix does not decode on to the full length beside them; otherwise one call per process, capped at the
        largest budget of any process. A group's G rows share prompt + prefix: with ``shared_forward`` each
        distinct one is prefilled once (``SharedForwardMixin._generate_single_turn``)."""
        if self.use_vllm:  # vLLM takes a budget per request
            return vllm_generate(self, prompt_ids, budgets, n)
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
        self.rpo_state.rounds += 1
        round_index = self.rpo_state.rounds
        keys = [row_key(row, p, self.args.rpo_key_column) for row, p in zip(self._rpo_rows, prompt_ids)]
        init_rows(self, self._rpo_rows, prompt_ids, keys, shared=False)  # lazy init (and what eager lacked)
        drifts = self._rpo_probe(keys, prompt_ids)
        plans = plan_rows(self.rpo_cache, keys, prompt_ids, self.rpo_settings, self.args.seed, round_index, drifts)
        suffixes, logprobs = self._sample([p + plan.prefix for p, plan in zip(prompt_ids, plans)],
                                          [plan.budget for plan in plans], self.num_generations)
        completions = [plan.prefix + s for plan, s in zip(plans, suffixes)]
        if logprobs is not None:  # the prefix was not sampled now: NaN makes TRL's sampling correction skip it
            logprobs = [[float("nan")] * len(plan.prefix) + lp for plan, lp in zip(plans, logprobs)]
        self._rpo_pending = (keys, plans, prompt_ids, completions, [len(s) for s in suffixes],
                             [drifts.get(k) for k in keys])
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
        if not self.model.training:
            self._rpo_sampled_eval(rewards_per_func)
            return rewards_per_func
        if self._rpo_pending is None:
            return rewards_per_func
        local, self._rpo_pending = self._rpo_pending, None
        rows = [r for part in gather_object([list(zip(*local))]) for r in part]  # global, in TRL's row order
        keys, plans, prompt_ids, responses, suffix_lengths, drifts = (list(x) for x in zip(*rows))
        col, G = self.rpo_correct_index, self.num_generations
        values = rewards_per_func[:, col].tolist()
        correct = correctness(values, self.args.rpo_correct_threshold, self.reward_func_names[col])
        if self.args.rpo_length_aware:
            deltas = length_deltas([0.0 if v != v else v for v in values], correct, [len(r) for r in responses], G,
                                   self.args.rpo_length_alpha)
            rewards_per_func[:, -1] = torch.tensor(deltas, dtype=rewards_per_func.dtype,
                                                   device=rewards_per_func.device)
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        totals = (rewards_per_func * weights).nansum(dim=1).tolist()
        writer = self._rpo_logprobs if self.rpo_settings.cache.refresh_drift else None  # weights not yet updated
        update_rows(self.rpo_cache, keys, plans, prompt_ids, responses, totals, correct, G, self.rpo_settings,
                    self.args.seed, self.rpo_state.rounds, writer)
        state = self.rpo_state
        state.generated_tokens += sum(suffix_lengths)
        metrics = round_metrics(plans, suffix_lengths, self.rpo_cache)
        metrics.update({"rpo/round": float(state.rounds), "rpo/generated_tokens": float(state.generated_tokens),
                        "rpo/init_tokens": float(state.init_tokens), "rpo/init_s": state.init_s})
        firsts = range(0, len(plans), G)  # one per group
        guard = drift_metrics([drifts[i] for i in firsts], [plans[i].refresh for i in firsts
                                                             if plans[i].refresh != "init"] or [None])
        metrics.update({"rpo/" + name.split("/", 1)[1]: value for name, value in guard.items()})
        for name, value in metrics.items():
            self._metrics["train"][name].append(value)
        return rewards_per_func

    def _rpo_sampled_eval(self, rewards_per_func: torch.Tensor) -> None:
        """``rpo/eval_pass_at_k`` and ``rpo/eval_mean_at_k`` (k = ``num_generations_eval``, ``rpo_train.evaluation``)
        of an evaluation batch, from the correctness reward."""
        col, k = self.rpo_correct_index, self.num_generations_eval
        correct = correctness(rewards_per_func[:, col].tolist(), self.args.rpo_correct_threshold,
                              self.reward_func_names[col])
        counts = [sum(correct[lo:lo + k]) for lo in range(0, len(correct), k)]
        self._metrics["eval"]["rpo/eval_pass_at_k"].append(sum(pass_at_k(k, c, k) for c in counts) / len(counts))
        self._metrics["eval"]["rpo/eval_mean_at_k"].append(sum(counts) / max(len(correct), 1))

    # -- cache init ----------------------------------------------------------------------------------------------
    def rpo_init_cache(self, chunk: int | None = None) -> None:
        """The paper's cache init: one response per training question from the current policy, before training
        (``rpo_train.integrations.trl_init.eager_init``)."""
        eager_init(self, chunk)

    def train(self, resume_from_checkpoint=None, **kwargs):
        if not self.rpo_state.init_mode:
            self.rpo_state.init_mode = resolve_init_mode(self)
        if not resume_from_checkpoint and self.rpo_state.init_mode == "eager" and not len(self.rpo_cache):
            self.rpo_init_cache()
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        if self.args.should_save:  # written first: a folder with weights always has its cache
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            self.rpo_cache.save(folder / CACHE_FILE)
            self.rpo_state.save(folder / STATE_FILE)
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
            self.rpo_state = RPOTrainerState.load(state, rounds_if_missing=self.state.global_step)

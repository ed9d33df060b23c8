"""The RPO training loop with full-path GRPO/DAPO as drop-ins (``objective.mode: full``).

step: rollout (cut cached responses, sample G suffixes per question) -> rewards -> group advantages (dynamic
sampling refills the batch) -> policy forward + fused clipped-ratio loss -> AdamW -> weights pushed to the engine ->
epsilon-greedy cache update -> metrics; checkpoints (model, optimizer, scheduler, cache, RNG, step) every
``save_every`` steps, resumed automatically from ``out_dir``; ``stop`` ends a run early at a step boundary, with a
checkpoint there.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .cache import ExperienceCache
from .cache_init import LazyInit, eager_init, init_mode, store
from .config import RunConfig
from .data import Question
from .evaluation import sampled_eval
from .groups import Group, advantages_of, collect_groups, rollout_groups, rollout_stats, sample_and_score
from .health import observe_signal
from .model.policy import PolicySample, build_batch, forward_loss, micro_batches, response_logprobs, sequence_logprobs
from .plan import update_group
from .rollout.params import SamplingParams
from .run_inputs import load_run_inputs
from .runtime.checkpointing import resume_run, save_run
from .runtime.distributed import DistContext
from .runtime.metrics import MetricsLogger
from .runtime.run_state import RunState
from .runtime.seeding import derive_seed
from .runtime.sharding import clip_grad_norm, full_state_dict, is_sharded_tensor, shard_layers
from .update_guard import NonFiniteGuard


class Trainer:
    """Owns model, optimizer, engine, experience cache and metrics of one run; ``train()`` runs it. ``stop()``, when
    given, is asked before each step (on every rank): True on any rank ends the run there (see ``train``)."""

    def __init__(self, cfg: RunConfig, *, reward_fn=None, dist: DistContext | None = None,
                 stop: Callable[[], bool] | None = None):
        self.cfg, self.stop = cfg, stop
        self.dist = dist or DistContext()
        self.device = self.dist.device(cfg.device)
        self.out = Path(cfg.out_dir)
        self.rng = random.Random(cfg.seed)
        torch.manual_seed(cfg.seed)
        inputs = load_run_inputs(cfg, self.device, reward_fn=reward_fn)
        self.model, self.tokenizer, self.engine = inputs.model, inputs.tokenizer, inputs.engine
        self.reward_fn, self.stop_ids = inputs.reward_fn, inputs.stop_ids
        self.train_questions, self.test_questions = inputs.train_questions, inputs.test_questions
        self.precision = inputs.precision
        self.run = RunState("file" if cfg.cache.init_path else
                            init_mode(cfg.cache.init, cfg.steps, cfg.batch_questions, len(self.train_questions)))
        # An RPO run initialises any drawn question still without an entry when it is drawn: every question under
        # lazy, and under eager those a resumed lazy run (auto decides by ``steps``, which a resume may raise) or a
        # cache.init_path file never had.
        self.lazy_init = LazyInit(self.train_questions) if cfg.objective.mode == "rpo" else None
        self.sharded = self.dist.distributed and cfg.optim.parallel == "fsdp"
        forward = cfg.optim.policy_forward
        rpo_default = cfg.objective.mode == "rpo"
        self.policy_forward = ("prefix_once" if rpo_default else "plain") if forward == "auto" else forward
        if cfg.optim.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.ref_model = None
        if cfg.objective.beta > 0:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        if self.sharded:
            shard_layers(self.model, torch.device(self.device).type)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr,
                                           weight_decay=cfg.optim.weight_decay,
                                           foreach=False if self.sharded else None)
        warm = cfg.optim.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.cache = ExperienceCache()
        self.nonfinite = NonFiniteGuard(cfg.optim.max_nonfinite_steps, self.dist, cfg.optim.lr)
        self.probe_s = self.init_s = 0.0
        self.logger = MetricsLogger(self.out) if self.dist.is_main else None

    # -- phases ------------------------------------------------------------------------------------------------
    def init_cache(self) -> None:
        """The eager cache init: one sampled response per training question from the initial policy
        (``rpo_train.cache_init``; each rank samples its share, every rank then holds the whole cache)."""
        if self.cfg.cache.init_path:
            self.cache = ExperienceCache.load(self.cfg.cache.init_path)
            return
        start = time.perf_counter()
        found = eager_init(self.engine, self.train_questions, self.cfg, self.tokenizer, self.reward_fn, self.stop_ids,
                           self.dist)
        store(self.cache, self.train_questions, found, self.cfg.truncation.initial_limit())
        self.run.count_init(sum(f.generated for f in found), [len(f.ids) for f in found])
        self.run.timings["cache_init_s"] += time.perf_counter() - start

    def _next_questions(self, count: int) -> list[Question]:
        return [self.train_questions[i] for i in self.run.draw(count, len(self.train_questions), self.rng)]

    def _collect(self) -> tuple[list[Group], list[Group], dict]:
        """(groups to train on, all groups rolled out, rollout metrics), global; see ``collect_groups``."""
        cfg = self.cfg
        self.probe_s = self.init_s = 0.0
        probe = self._probe if cfg.cache.probes_at(self.run.step + 1, cfg.truncation.cut_at == "entropy") else None

        def rollout(questions, seeds):
            filled = {}
            if self.lazy_init is not None:
                filled, seconds = self.lazy_init.fill(self.cache, questions, self.engine, cfg, self.tokenizer,
                                                      self.reward_fn, self.stop_ids)
                self.init_s += seconds
            groups = rollout_groups(self.engine, questions, self.cache, cfg, self.tokenizer, self.reward_fn, seeds,
                                    self.stop_ids, probe=probe, step=self.run.step + 1)
            for g in groups:
                g.init = filled.pop(g.qid, None)
            return groups

        kept, rolled = collect_groups(self._next_questions, rollout, cfg, self.dist,
                                      derive_seed(cfg.seed, self.run.step))
        stats = rollout_stats(kept, rolled, cfg)
        self.run.last_drift = {k: v for k, v in stats.items() if k.startswith("cache/drift_")} or self.run.last_drift
        inits = [g.init for g in rolled if g.init is not None]
        if cfg.objective.mode == "rpo":
            stats.update({"time/probe_s": self.probe_s, "time/init_s": self.init_s,
                          "cache/init_responses": float(len(inits))})
        self.run.count_init(sum(tokens for tokens, _ in inits), [length for _, length in inits])
        self.run.count_rollout([len(s) for g in rolled for s in g.suffixes], len(rolled),
                               sum(g.refresh is not None for g in rolled))
        return kept, rolled, stats

    def _autocast(self):
        """The run's autocast (``rpo_train.model.precision``: bf16 beside fp32 master weights on a GPU, or on a CPU
        with bf16 instructions under ``dtype: auto``; the fused loss accumulates in fp32), else a disabled one."""
        return self.precision.context(self.model.device.type)

    def _probe(self, prompts: list[list[int]], responses: list[list[int]]) -> list[tuple]:
        """The drift probe: the current policy's log-probs and entropies of cached responses (``rpo_train.drift``).
        Under FSDP every rank runs one forward per call, a placeholder when it has no rows."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if not prompts and not self.sharded:
            return []
        start = time.perf_counter()
        with self._autocast():
            out = response_logprobs(self.model, prompts or [[pad]], responses or [[pad]], pad,
                                    self.cfg.rollout.temperature)
        self.probe_s += time.perf_counter() - start  # part of the step's rollout time, shown on its own
        return out if prompts else []

    def _optimize(self, kept: list[Group]) -> dict:
        """One update on the global ``kept`` groups: this rank's share, loss weights over the global token (or
        sequence) count, gradients summed over ranks, then clip and AdamW (the same on every rank); skipped when the
        loss or gradient norm is not finite (``rpo_train.update_guard``)."""
        cfg = self.cfg
        groups = self.dist.share(kept)
        samples = [PolicySample(g.prompt_ids, g.prefix_ids, s) for g in groups for s in g.suffixes]
        adv = advantages_of(groups, cfg.objective.adv_eps).flatten() if groups else torch.zeros(0)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        micro = micro_batches([len(g.suffixes) for g in groups], cfg.optim.micro_batch)
        batches = [build_batch([samples[i] for i in idx], pad, cfg.objective.loss_tokens,
                               self.policy_forward).to(self.device) for idx in micro]
        by_tokens = cfg.objective.loss_type in ("dapo", "bnpo")
        sizes = [float(b.loss_mask.sum()) if by_tokens else float(len(idx)) for b, idx in zip(batches, micro)]
        total = max(self.dist.sum_floats([sum(sizes)])[0], 1.0)
        if self.sharded:  # sharded layers gather weights in every forward: the same number of micro-batches everywhere
            extra = max(self.dist.gather(len(batches))) - len(batches)
            dummy = build_batch([PolicySample([pad], [], [pad])], pad).to(self.device)
            batches, sizes = batches + [dummy] * extra, sizes + [0.0] * extra
            micro, adv = micro + [[len(adv)]] * extra, torch.cat([adv, torch.zeros(1)])
        # mu > 1: pi_old is the policy before this step's first update, recomputed here (see ObjectiveConfig)
        with self._autocast():  # the same numerics as the policy's forward below
            old = ([sequence_logprobs(self.model, b, cfg.rollout.temperature) for b in batches]
                   if cfg.objective.mu > 1 else [None] * len(batches))
            ref = ([sequence_logprobs(self.ref_model, b, cfg.rollout.temperature) for b in batches]
                   if self.ref_model is not None else [None] * len(batches))
        sums: dict[str, float] = {}
        skipped = False
        for _ in range(cfg.objective.mu):
            self.optimizer.zero_grad(set_to_none=True)
            for b, idx, size, o, r in zip(batches, micro, sizes, old, ref):
                with self._autocast():
                    loss, metrics = forward_loss(self.model, b, adv[idx], cfg.objective, old_logprobs=o,
                                                ref_logprobs=r, temperature=cfg.rollout.temperature,
                                                max_response_len=cfg.rollout.max_response_len)
                (loss * (size / total)).backward()
                for k, v in {**metrics, "loss": loss.detach()}.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * size / total / cfg.objective.mu
            if self.sharded:  # FSDP summed the layers' gradients; the whole parameters' are summed here
                self.dist.sum_gradients([p for p in self.model.parameters() if not is_sharded_tensor(p)])
                grad_norm = clip_grad_norm(list(self.model.parameters()), cfg.optim.grad_clip)
            else:
                self.dist.sum_gradients(self.model.parameters())
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            skipped = not self.nonfinite.finite(sums.get("loss", 0.0), grad_norm)
            if skipped:
                break
            self.optimizer.step()
        self.scheduler.step()
        self._push_weights()
        merged: dict[str, float] = {}
        for part in self.dist.gather(sums):
            for k, v in part.items():
                merged[k] = merged.get(k, 0.0) + v
        merged["grad_norm"] = float(grad_norm)
        merged["lr"] = self.scheduler.get_last_lr()[0]
        guard = self.nonfinite.settle(self.run.step + 1, skipped, merged.get("loss", 0.0), merged["grad_norm"])
        return {**{f"train/{k}": v for k, v in merged.items()}, **guard}

    def train_step(self) -> dict:
        """One optimisation step; returns its metrics."""
        start = time.perf_counter()
        kept, rolled, stats = self._collect()
        t_roll = time.perf_counter()
        # No learning signal (every group's rewards equal, no KL term): skip the update rather than let Adam's
        # momentum move the weights on zero gradients.
        signal = any(not g.zero_variance for g in kept) or self.cfg.objective.beta > 0
        train = self._optimize(kept) if kept and signal else {}
        t_train = time.perf_counter()
        self.run.step += 1
        for g in rolled:  # global and in one order: every rank's cache makes the same updates
            update_group(self.cache, g.qid, g.prompt_ids, g.plan, g.responses, g.rewards, g.correct, self.run.step,
                         self.cfg.cache.epsilon, self.cfg.truncation, random.Random(derive_seed(g.seed, "cache")),
                         logprobs=g.logprobs)
        health = observe_signal(self.run, self.run.step, rolled, self.cfg.health_window, announce=self.dist.is_main,
                                lr=self.cfg.optim.lr)
        self.run.timings["cache_init_s"] += self.init_s  # a lazy init's sampling, not counted as rollout time
        self.run.timings["rollout_s"] += t_roll - start - self.init_s
        self.run.timings["train_s"] += t_train - t_roll
        return {**stats, **train, **health, **self.cache.metrics(self.run.step),
                "time/rollout_s": t_roll - start - self.init_s, "time/train_s": t_train - t_roll,
                "time/step_s": time.perf_counter() - start}

    @torch.no_grad()
    def evaluate(self, questions: list[Question] | None = None) -> float:
        """Greedy accuracy on the held-out questions (or ``questions``; each rank answers its share)."""
        questions = questions or self.test_questions
        mine = self.dist.share(questions)
        params = SamplingParams(self.cfg.eval_max_new_tokens, temperature=0.0, stop_token_ids=self.stop_ids)
        out = sample_and_score(self.engine, mine, params, self.tokenizer, self.reward_fn)
        hits = [s.correct for (s,) in out]
        return self.dist.sum_floats([float(sum(hits))])[0] / len(questions)

    def evaluations(self, step: int) -> dict[str, float]:
        """``eval/accuracy`` (greedy), and with ``eval_samples`` k the sampled ``eval/pass_at_k`` and
        ``eval/mean_at_k`` (``rpo_train.evaluation``)."""
        out = {"eval/accuracy": self.evaluate()}
        if self.cfg.eval_samples:
            out.update(sampled_eval(self.engine, self.test_questions, self.cfg, self.tokenizer, self.reward_fn,
                                    self.stop_ids, self.dist, step))
        return out

    # -- persistence -------------------------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Checkpoint the run (``rpo_train.runtime.checkpointing.save_run``)."""
        return save_run(self)

    def resume(self) -> bool:
        """Restore the newest checkpoint of ``out_dir`` if there is one
        (``rpo_train.runtime.checkpointing.resume_run``), then push its weights to the engine."""
        if not resume_run(self):
            return False
        self._push_weights()
        return True

    def _push_weights(self) -> None:
        """Install the policy's current weights in the rollout engine (gathered whole from shards under FSDP)."""
        self.engine.load_state_dict(full_state_dict(self.model) if self.sharded else self.model.state_dict())

    def _log(self, step: int, metrics: dict) -> None:
        if self.logger is not None:
            self.logger.log(step, metrics)

    def _stop_asked(self) -> bool:
        """Whether ``stop`` says so on any rank (every rank asks at the same point)."""
        return self.stop is not None and self.dist.any_rank(self.stop())

    def train(self) -> dict:
        """Run (or resume) to ``cfg.steps``; returns the summary (accuracy before/after, tokens, times). Stopped early
        by ``stop``, it checkpoints the step reached (unless that is done) and returns ``{"stopped_at": step}``."""
        resumed = self.resume()
        if not resumed and self._stop_asked():  # before the first evaluation and the cache init: nothing to save
            return {"stopped_at": self.run.step}
        summary = {}
        if self.logger is not None:  # rows logged after the checkpoint (or by a run that never checkpointed) go
            self.logger.resume_at(self.run.step if resumed else -1)
            summary = self.logger.summary() if resumed else {}
        if not resumed:
            before = self.evaluations(0)
            summary.update({f"{k.split('/')[1]}_before": v for k, v in before.items()})
            if self.cfg.objective.mode == "rpo" and self.run.init_mode != "lazy":
                self.init_cache()
            self._log(0, before)
            if self.logger is not None:
                self.logger.save_summary(summary)
        accuracy, evaluated_at, last = summary.get("accuracy_before", float("nan")), -1, {}
        saved_at = self.run.step if resumed else -1
        with tqdm(total=self.cfg.steps, initial=self.run.step, desc="rpo-train", disable=not self.dist.is_main) as bar:
            while self.run.step < self.cfg.steps:
                if self._stop_asked():
                    if saved_at != self.run.step:
                        self.save()
                    return {"stopped_at": self.run.step}
                metrics = self.train_step()
                if self.run.step % self.cfg.eval_every == 0 or self.run.step == self.cfg.steps:
                    last = self.evaluations(self.run.step)
                    metrics.update(last)
                    accuracy, evaluated_at = last["eval/accuracy"], self.run.step
                self._log(self.run.step, metrics)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward/mean']:.2f}", acc=f"{accuracy:.2f}")  # the latest eval
                if self.run.step % self.cfg.save_every == 0 or self.run.step == self.cfg.steps:
                    self.save()
                    saved_at = self.run.step
        last = last if evaluated_at == self.run.step else self.evaluations(self.run.step)
        summary.update({f"{k.split('/')[1]}_after": v for k, v in last.items()},
                       **self.run.summary(world_size=self.dist.world_size, cache_digest=self.cache.digest(),
                                          precision=self.precision.header()))
        if self.logger is not None:
            self.logger.save_summary(summary)
            self.logger.plot()
        self.dist.barrier()  # no rank tears the process group down while another still uses it
        return summary

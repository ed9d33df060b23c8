"""``NativeEngine``: rollouts on ``rpo_kernels`` with one prefix KV per group and batched suffix decoding.

KV lives in lanes (``rpo_train.rollout.kv_lanes``): one prefix lane per group, one suffix lane per running sample,
sized per call so that a running sequence never runs out of room. One ``generate`` call runs a small
continuous-batching loop:
1. fork: groups whose prefix KV is ready start more of their G samples while suffix lanes are free;
2. admit: waiting groups (FIFO) are prefilled ONCE each, prompt + prefix packed into one forward, under the current
   weights, when a prefix lane and a suffix lane for their first sample are free; otherwise they wait (idle cached
   prefixes are evicted first);
3. decode: every running sequence advances one token against its group's prefix lane and its own suffix lane, one
   plan per step for all layers (``rpo_train.rollout.model``); sequences leave at EOS / a stop token / their budget
   and free their lane.
Prefix KV entries are tagged with the weight version; ``load_state_dict`` bumps it and drops every entry, so a prefix
is always re-prefilled under new weights (``LaneKV`` raises if a stale entry were ever asked for).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..runtime.finite import NonFiniteError
from .config import NativeEngineConfig
from .interface import Completion, GroupRequest, normalize_requests
from .kv_lanes import LaneKV, LaneShape
from .model import LaneDecoder
from .model_folder import check_supported, eos_token_ids, load_model, load_tokenizer, model_dir
from .params import SamplingParams
from .sampling import NoiseStream, processed_logprobs, sample


@dataclass(eq=False)
class _Group:
    req: GroupRequest
    results: list
    forked: int = 0
    lane: int = -1  # its prefix lane once admitted

    @property
    def key(self) -> tuple[int, ...]:
        return self.req.tokens


@dataclass(eq=False)
class _Seq:
    group: _Group
    sample: int
    lane: int  # its suffix lane
    noise: NoiseStream | None
    length: int = 0  # tokens fed back so far (its suffix lane's fill)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


def _round_up(n: int, multiple: int = 16) -> int:
    return -(-n // multiple) * multiple


class NativeEngine:
    """Rollout engine for HF-format Llama / Qwen2 / Qwen3 checkpoints on ``rpo_kernels`` (CPU fp32, GPU bf16)."""

    def __init__(self, hf_model, *, eos_token_ids=(), config: NativeEngineConfig | None = None, tokenizer=None):
        check_supported(hf_model.config, f"model {type(hf_model).__name__}")
        self.config = config or NativeEngineConfig()
        self.model = m = LaneDecoder(hf_model, attention_backend=self.config.attention_backend)
        self.tokenizer = tokenizer
        self.eos_token_ids = tuple(eos_token_ids)
        self.vocab_size = hf_model.get_input_embeddings().weight.shape[0]
        self.max_model_len = self.config.max_model_len or hf_model.config.max_position_embeddings
        _, hkv, d = m.heads
        per_token = 2 * m.num_layers * hkv * d * torch.empty((), dtype=m.dtype).element_size()
        self.budget_tokens = self.config.kv_budget_tokens or max(1, self.config.kv_budget_bytes // per_token)
        self.kv = LaneKV(m.num_layers, hkv, d, m.dtype, m.device)
        self.weight_version = 0
        self._cached: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()  # prefix key -> last logits [V]
        self._users: dict[tuple[int, ...], int] = {}
        self.stats = {"prefill_tokens": 0, "prefill_calls": 0, "prefix_hits": 0, "decode_steps": 0,
                      "generated_tokens": 0}

    @classmethod
    def from_pretrained(cls, path, *, device="cpu", dtype: torch.dtype = torch.float32,
                        config: NativeEngineConfig | None = None) -> NativeEngine:
        """Load a local HF-format checkpoint (config.json + safetensors); nothing is downloaded."""
        p = model_dir(path)
        model = load_model(p, dtype=dtype, device=device)
        return cls(model, eos_token_ids=eos_token_ids(p, model.config), config=config, tokenizer=load_tokenizer(p))

    # -- weights ------------------------------------------------------------------------------------------------
    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True) -> None:
        """Copy new weights (HF parameter names) into the model; bumps ``weight_version``; drops all prefix KV.

        strict: missing or unexpected keys raise (after torch copied the matching ones), so the version is bumped and
        the KV dropped even when the load fails: a partly loaded model never meets KV of the old weights.
        """
        try:
            with torch.no_grad():
                self.model.hf.load_state_dict(dict(state_dict), strict=strict)
        finally:
            self.weight_version += 1
            self.kv.evict_stale(self.weight_version)
            self._cached.clear()
            self._users.clear()

    # -- memory -------------------------------------------------------------------------------------------------
    def _lane_shape(self, groups: list[GroupRequest]) -> LaneShape:
        """Lanes for this call within the KV budget: capacities of its longest prefix and largest budget - 1."""
        live = [g for g in groups if g.budget > 0]
        budget = self.budget_tokens
        for g in live:
            if len(g.tokens) + max(g.budget - 1, 1) > budget:
                raise ValueError(f"prompt {g.index}: prompt + prefix ({len(g.tokens)} tokens) and one sample of "
                                 f"{g.budget} tokens need more KV than the whole budget ({budget} tokens); raise "
                                 f"kv_budget_tokens")
        p_cap = max(len(g.tokens) for g in live)
        s_cap = max(max(g.budget - 1, 1) for g in live)
        if _round_up(p_cap) + _round_up(s_cap) <= budget:  # round up so that similar calls reuse the buffers
            p_cap, s_cap = _round_up(p_cap), _round_up(s_cap)
        seqs = min(self.config.max_num_seqs, sum(g.n for g in live))
        prefixes = min(self.config.max_num_seqs, len(live))
        seqs = max(1, min(seqs, (budget - p_cap) // s_cap))
        prefixes = max(1, min(prefixes, (budget - seqs * s_cap) // p_cap))
        need = LaneShape(prefixes, p_cap, seqs, s_cap)
        old = self.kv.shape
        if old is not None and not old.covers(need):
            grown = LaneShape(*(max(a, b) for a, b in zip(old.__dict__.values(), need.__dict__.values())))
            need = grown if grown.tokens() <= budget else need
        return need

    def _fit_prefix(self, keep: set) -> bool:
        """Evict idle cached prefixes (least recently used first) until a prefix lane is free."""
        while self.kv.free_prefix_lanes() == 0:
            idle = next((k for k in self._cached if self._users.get(k, 0) == 0 and k not in keep), None)
            if idle is None:
                return False
            self._drop(idle)
        return True

    def _drop(self, key) -> None:
        self._cached.pop(key, None)
        self._users.pop(key, None)
        self.kv.drop_prefix(key)

    # -- generation ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts, *, prefixes=None, n: int = 1, params: SamplingParams) -> list[list[Completion]]:
        """Sample ``n`` continuations of each ``prompt + prefix`` (token-id lists) under ``params``; see
        ``RolloutEngine``.

        Returns one list of ``n`` ``Completion`` per prompt: token_ids (suffix only), fp32 logprobs under the
        sampling distribution used, finish_reason "stop" | "length".
        """
        groups = normalize_requests(prompts, prefixes, n, params, vocab_size=self.vocab_size,
                                    max_model_len=self.max_model_len)
        state = [_Group(g, [None] * g.n) for g in groups]
        for g in state:
            if g.req.budget == 0:
                g.results = [Completion([], [], "length") for _ in range(g.req.n)]
        waiting = [g for g in state if g.req.budget > 0]
        if not waiting:
            return [g.results for g in state]
        if self.kv.ensure(self._lane_shape(groups)):
            self._cached.clear()
            self._users.clear()
        streams = params.seed_streams(len(groups))
        stop_set = set(self.eos_token_ids) | set(params.stop_token_ids)
        self.kv.evict_stale(self.weight_version)
        ready: list[_Group] = []
        running: list[_Seq] = []
        try:
            while waiting or running or ready:
                self._fork_ready(ready, running, params, streams, stop_set)
                admitted = self._admit(waiting, running)
                ready += admitted
                self._fork_ready(ready, running, params, streams, stop_set)
                if running:
                    self._decode_step(running, params, stop_set)
                elif not admitted:
                    raise RuntimeError("rollout scheduler made no progress (KV accounting error)")
        finally:  # an error (or an interrupt) leaves no sequence or pinned prefix behind
            for s in running:
                self.kv.free_sequence(s.lane)
            for g in ready:
                self._users[g.key] -= 1
        return [g.results for g in state]

    def _admit(self, waiting: list[_Group], running: list[_Seq]) -> list[_Group]:
        """Prefill as many waiting groups (FIFO) as fit; returns them with their prefix KV ready."""
        admitted, new_keys, batch_tokens = [], [], 0
        while waiting and len(running) + len(admitted) < self.config.max_num_seqs:
            g = waiting[0]
            cached = self.kv.has_prefix(g.key) or g.key in new_keys
            if not cached and new_keys and batch_tokens + len(g.key) > self.config.max_prefill_tokens:
                break
            if self.kv.free_suffix_lanes() <= len(admitted):  # each admitted group forks its first sample next
                break
            if not cached and not self._fit_prefix(set(new_keys) | {a.key for a in admitted}):
                break
            waiting.pop(0)
            if not cached:
                self.kv.add_prefix(g.key, len(g.key), self.weight_version)
                new_keys.append(g.key)
                batch_tokens += len(g.key)
            elif g.key in self._cached:
                self.stats["prefix_hits"] += 1
                self._cached.move_to_end(g.key)
            self._users[g.key] = self._users.get(g.key, 0) + 1
            admitted.append(g)
        try:
            if new_keys:
                self._prefill(new_keys)
            for g in admitted:
                g.lane = self.kv.prefix(g.key, self.weight_version)[0]
        except BaseException:
            for g in admitted:
                self._users[g.key] -= 1
            for k in new_keys:
                self._drop(k)
            raise
        return admitted

    def _prefill(self, keys: list[tuple[int, ...]]) -> None:
        lanes = [self.kv.prefix(k, self.weight_version)[0] for k in keys]
        logits = self.model.prefill(keys, lanes, self.kv)
        for k, row in zip(keys, logits):
            self._cached[k] = row.clone()
        self.stats["prefill_tokens"] += sum(len(k) for k in keys)
        self.stats["prefill_calls"] += 1

    def _fork_ready(self, ready: list[_Group], running: list[_Seq], params: SamplingParams,
                    streams: list[tuple[int, int]], stop_set: set) -> None:
        """Start the next samples of ready groups, in order, while suffix lanes and max_num_seqs allow."""
        for g in list(ready):
            room = min(self.config.max_num_seqs - len(running), self.kv.free_suffix_lanes())
            k = min(g.req.n - g.forked, room)
            if k <= 0:
                break
            seqs = [_Seq(g, g.forked + j, self.kv.fork(g.key, self.weight_version),
                         None if params.greedy else NoiseStream(*streams[g.req.index], g.forked + j))
                    for j in range(k)]
            g.forked += k
            logits = self._cached[g.key].expand(k, -1)
            running += seqs
            self._advance(seqs, logits, running, params, stop_set)
            if g.forked == g.req.n:
                ready.remove(g)
                self._users[g.key] -= 1
                if not self.config.reuse_prefix_kv and self._users[g.key] == 0:
                    self._drop(g.key)

    def _advance(self, seqs: list[_Seq], logits: torch.Tensor, running: list[_Seq], params: SamplingParams,
                 stop_set: set) -> None:
        """Sample one token for each of ``seqs`` from ``logits`` [len(seqs), V]; finish the ones that are done."""
        lp = processed_logprobs(logits, params)
        # a row of NaN logits samples past the vocabulary: clamp it, read its flag in the sync below, refuse it
        tok = sample(lp, None if params.greedy else [s.noise for s in seqs]).clamp_(max=lp.shape[-1] - 1)
        finite = torch.isfinite(logits).all(dim=-1)
        tokens, chosen, ok = torch.stack([tok.double(), lp.gather(1, tok[:, None])[:, 0].double(),
                                          finite.double()]).tolist()
        if not all(ok):
            raise NonFiniteError(f"native engine, decode step {self.stats['decode_steps']}: the logits of "
                                 f"{ok.count(0.0)} of {len(ok)} sequences hold NaN or inf (the policy's weights or "
                                 "activations overflowed: a diverged run, or too high a learning rate)")
        self.stats["generated_tokens"] += len(seqs)
        done = set()
        for s, t, logprob in zip(seqs, map(int, tokens), chosen):
            s.tokens.append(t)
            s.logprobs.append(logprob)
            reason = "stop" if t in stop_set else "length" if len(s.tokens) >= s.group.req.budget else None
            if reason is not None:
                s.group.results[s.sample] = Completion(s.tokens, s.logprobs, reason)
                self.kv.free_sequence(s.lane)
                done.add(id(s))
        if done:
            running[:] = [s for s in running if id(s) not in done]

    def _decode_step(self, running: list[_Seq], params: SamplingParams, stop_set: set) -> None:
        for s in running:
            s.length += 1
        logits = self.model.decode([s.tokens[-1] for s in running], [s.group.lane for s in running],
                                   [len(s.group.key) for s in running], [s.lane for s in running],
                                   [s.length for s in running], self.kv)
        self.stats["decode_steps"] += 1
        self._advance(list(running), logits, running, params, stop_set)

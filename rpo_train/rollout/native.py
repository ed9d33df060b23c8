"""``NativeEngine``: rollouts on ``rpo_kernels`` with one prefix KV per group and batched suffix decoding.

One ``generate`` call runs a small continuous-batching loop:
1. fork: groups whose prefix KV is ready start more of their G samples while KV memory allows (a sample allocates its
   worst-case suffix blocks, budget - 1 tokens, when it starts, so a running sequence never runs out of memory);
2. admit: waiting groups (FIFO) are prefilled ONCE each, prompt + prefix packed into one forward, under the current
   weights, when their prefix and one sample fit; otherwise they wait (idle cached prefixes are evicted first);
3. decode: every running sequence advances one token against its group's single prefix KV and its own suffix KV;
   sequences leave at EOS / a stop token / their budget and their blocks are freed.
Prefix KV entries are tagged with the weight version; ``load_state_dict`` bumps it and drops every entry, so a prefix
is always re-prefilled under new weights (``PrefixKVStore`` raises if a stale entry were ever asked for).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from rpo_kernels import KVStoreConfig, PrefixKVStore

from .checkpoint import check_supported, checkpoint_dir, eos_token_ids, load_model, load_tokenizer
from .config import NativeEngineConfig, SamplingConfig
from .interface import Completion, GroupRequest, normalize_requests, seed_streams
from .model import DecodeLayout, PagedDecoder
from .sampling import NoiseStream, processed_logprobs, sample


@dataclass(eq=False)
class _Group:
    req: GroupRequest
    results: list
    forked: int = 0
    prefix_slots: torch.Tensor | None = None

    @property
    def key(self) -> tuple[int, ...]:
        return self.req.tokens


@dataclass(eq=False)
class _Seq:
    group: _Group
    sample: int
    sid: int
    noise: NoiseStream | None
    slots: torch.Tensor  # [budget - 1] store slots of the suffix tokens it may feed back, allocated when it starts
    length: int = 0
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


class NativeEngine:
    """Rollout engine for HF-format Llama / Qwen2 / Qwen3 checkpoints on ``rpo_kernels`` (CPU fp32, GPU bf16)."""

    def __init__(self, hf_model, *, eos_token_ids=(), config: NativeEngineConfig | None = None, tokenizer=None):
        check_supported(hf_model.config, f"model {type(hf_model).__name__}")
        self.config = config or NativeEngineConfig()
        self.model = PagedDecoder(hf_model, attention_backend=self.config.attention_backend)
        self.tokenizer = tokenizer
        self.eos_token_ids = tuple(eos_token_ids)
        hf_config = hf_model.config
        self.vocab_size = hf_model.get_input_embeddings().weight.shape[0]
        self.max_model_len = self.config.max_model_len or hf_config.max_position_embeddings
        m = self.model
        bs = self.config.block_size
        tokens = self.config.kv_budget_tokens
        if tokens is None:  # kv_budget_bytes worth, but never more than max_num_seqs full-length sequences
            per_token = 2 * m.num_layers * m.num_kv_heads * m.head_dim * torch.empty((), dtype=m.dtype).element_size()
            cap = self.config.max_num_seqs * self.max_model_len
            tokens = max(bs, min(self.config.kv_budget_bytes // per_token, cap))
        self.store = PrefixKVStore(KVStoreConfig(m.num_layers, m.num_kv_heads, m.head_dim, -(-tokens // bs), bs,
                                                 m.dtype, m.device))
        self.weight_version = 0
        self._cached: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()  # prefix key -> last logits [V]
        self._users: dict[tuple[int, ...], int] = {}
        self.stats = {"prefill_tokens": 0, "prefill_calls": 0, "prefix_hits": 0, "decode_steps": 0,
                      "generated_tokens": 0}

    @classmethod
    def from_pretrained(cls, path, *, device="cpu", dtype: torch.dtype = torch.float32,
                        config: NativeEngineConfig | None = None) -> NativeEngine:
        """Load a local HF-format checkpoint (config.json + safetensors); nothing is downloaded."""
        p = checkpoint_dir(path)
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
            self.store.evict_stale(self.weight_version)
            self._cached.clear()
            self._users.clear()

    # -- memory -------------------------------------------------------------------------------------------------
    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self.config.block_size)

    def _worst(self, budget: int) -> int:
        """Blocks a sample may need: it feeds back at most budget - 1 tokens."""
        return self._blocks(max(budget - 1, 0))

    def _available(self) -> int:
        """Free blocks (running sequences hold their worst case already)."""
        st = self.store.stats()
        return st.blocks_total - st.blocks_used

    def _fit(self, need: int, keep: set, reserved: int = 0) -> bool:
        """Evict idle cached prefixes (least recently used first) until ``need`` more blocks are available."""
        while self._available() - reserved < need:
            idle = next((k for k in self._cached if self._users.get(k, 0) == 0 and k not in keep), None)
            if idle is None:
                return False
            self._drop(idle)
        return True

    def _drop(self, key) -> None:
        self._cached.pop(key, None)
        self._users.pop(key, None)
        self.store.drop_prefix(key)

    # -- generation ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts, *, prefixes=None, n: int = 1, max_new_tokens=256, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int | Sequence[int] | None = None,
                 stop_token_ids=None) -> list[list[Completion]]:
        """Sample ``n`` continuations of each ``prompt + prefix`` (token-id lists); see ``RolloutEngine``.

        Returns one list of ``n`` ``Completion`` per prompt: token_ids (suffix only), fp32 logprobs under the
        sampling distribution used, finish_reason "stop" | "length".
        """
        cfg = SamplingConfig(temperature, top_p, top_k, seed)
        groups, stops = normalize_requests(prompts, prefixes, n, max_new_tokens, vocab_size=self.vocab_size,
                                           max_model_len=self.max_model_len, stop_token_ids=stop_token_ids)
        total = self.store.config.num_blocks
        for g in groups:
            if self._blocks(len(g.tokens)) + self._worst(g.budget) > total:
                raise ValueError(f"prompt {g.index}: prompt + prefix ({len(g.tokens)} tokens) and one sample of "
                                 f"{g.budget} tokens need more KV than the whole budget "
                                 f"({total * self.config.block_size} tokens); raise kv_budget_tokens")
        streams = seed_streams(seed, len(groups))
        stop_set = set(self.eos_token_ids) | set(stops)
        self.store.evict_stale(self.weight_version)
        state = [_Group(g, [None] * g.n) for g in groups]
        waiting = [g for g in state if g.req.budget > 0]
        for g in state:
            if g.req.budget == 0:
                g.results = [Completion([], [], "length") for _ in range(g.req.n)]
        ready: list[_Group] = []
        running: list[_Seq] = []
        try:
            while waiting or running or ready:
                self._fork_ready(ready, running, cfg, streams, stop_set)
                admitted = self._admit(waiting, running)
                ready += admitted
                self._fork_ready(ready, running, cfg, streams, stop_set)
                if running:
                    self._decode_step(running, cfg, stop_set)
                elif not admitted:
                    raise RuntimeError("rollout scheduler made no progress (KV accounting error)")
        finally:  # an error (or an interrupt) leaves no sequence or pinned prefix behind
            for s in running:
                self.store.free_sequence(s.sid)
            for g in ready:
                self._users[g.key] -= 1
        return [g.results for g in state]

    def _admit(self, waiting: list[_Group], running: list[_Seq]) -> list[_Group]:
        """Prefill as many waiting groups (FIFO) as fit; returns them with their prefix KV ready."""
        admitted, new_keys, batch_tokens, reserved = [], [], 0, 0
        while waiting and len(running) + len(admitted) < self.config.max_num_seqs:
            g = waiting[0]
            cached = g.key in self._cached or g.key in new_keys
            need = self._worst(g.req.budget) + (0 if cached else self._blocks(len(g.key)))
            if not cached and new_keys and batch_tokens + len(g.key) > self.config.max_prefill_tokens:
                break
            if not self._fit(need, set(new_keys) | {a.key for a in admitted}, reserved):
                break
            waiting.pop(0)
            if not cached:
                self.store.add_prefix(g.key, len(g.key), self.weight_version)
                new_keys.append(g.key)
                batch_tokens += len(g.key)
            elif g.key in self._cached:
                self.stats["prefix_hits"] += 1
                self._cached.move_to_end(g.key)
            self._users[g.key] = self._users.get(g.key, 0) + 1
            admitted.append(g)
            reserved += self._worst(g.req.budget)  # its first sample forks right after the prefill
        try:
            if new_keys:
                self._prefill(new_keys)
            for g in admitted:
                g.prefix_slots = self.store.prefix_slots(g.key, self.weight_version)
        except BaseException:
            for g in admitted:
                self._users[g.key] -= 1
            for k in new_keys:
                self._drop(k)
            raise
        return admitted

    def _prefill(self, keys: list[tuple[int, ...]]) -> None:
        dev = self.model.device
        ids = torch.tensor([t for k in keys for t in k], dtype=torch.long, device=dev)
        positions = torch.cat([torch.arange(len(k)) for k in keys]).to(dev)
        indptr = torch.tensor([0] + [len(k) for k in keys], dtype=torch.long).cumsum(0).to(dev)
        slots = torch.cat([self.store.prefix_slots(k, self.weight_version) for k in keys])
        logits = self.model.prefill(ids, positions, indptr, slots, self.store)
        for k, row in zip(keys, logits):
            self._cached[k] = row.clone()
        self.stats["prefill_tokens"] += ids.numel()
        self.stats["prefill_calls"] += 1

    def _fork_ready(self, ready: list[_Group], running: list[_Seq], cfg: SamplingConfig,
                    streams: list[tuple[int, int]], stop_set: set) -> None:
        """Start the next samples of ready groups, in order, while KV memory and max_num_seqs allow."""
        for g in list(ready):
            worst = self._worst(g.req.budget)
            left = g.req.n - g.forked
            room = self.config.max_num_seqs - len(running)
            if worst:
                self._fit(worst, {x.key for x in ready})
                room = min(room, self._available() // worst)
            k = min(left, room)
            if k <= 0:
                break
            sids = self.store.fork(g.key, k, self.weight_version)
            slots = self.store.extend(sids, g.req.budget - 1).view(k, g.req.budget - 1)
            seqs = [_Seq(g, g.forked + j, sid, None if cfg.greedy else NoiseStream(*streams[g.req.index],
                                                                                     g.forked + j, self.vocab_size),
                         slots[j]) for j, sid in enumerate(sids)]
            g.forked += k
            logits = self._cached[g.key].expand(k, -1)
            running += seqs
            self._advance(seqs, logits, running, cfg, stop_set)
            if g.forked == g.req.n:
                ready.remove(g)
                self._users[g.key] -= 1
                if not self.config.reuse_prefix_kv and self._users[g.key] == 0:
                    self._drop(g.key)

    def _advance(self, seqs: list[_Seq], logits: torch.Tensor, running: list[_Seq], cfg: SamplingConfig,
                 stop_set: set) -> None:
        """Sample one token for each of ``seqs`` from ``logits`` [len(seqs), V]; finish the ones that are done."""
        lp = processed_logprobs(logits, cfg)
        tok = sample(lp, None if cfg.greedy else [s.noise for s in seqs])
        chosen = lp.gather(1, tok[:, None])[:, 0].tolist()
        self.stats["generated_tokens"] += len(seqs)
        for s, t, logprob in zip(seqs, tok.tolist(), chosen):
            s.tokens.append(t)
            s.logprobs.append(logprob)
            reason = "stop" if t in stop_set else "length" if len(s.tokens) >= s.group.req.budget else None
            if reason is not None:
                s.group.results[s.sample] = Completion(s.tokens, s.logprobs, reason)
                self.store.free_sequence(s.sid)
                running.remove(s)

    def _decode_step(self, running: list[_Seq], cfg: SamplingConfig, stop_set: set) -> None:
        running.sort(key=lambda s: (s.group.req.index, s.sample))
        dev = self.model.device
        groups, sizes, positions = [], [], []
        new_slots = torch.stack([s.slots[s.length] for s in running])
        for s in running:
            s.length += 1
            positions.append(len(s.group.key) + s.length - 1)
            if groups and groups[-1] is s.group:
                sizes[-1] += 1
            else:
                groups.append(s.group)
                sizes.append(1)
        layout = DecodeLayout(
            prefix_slots=torch.cat([g.prefix_slots for g in groups]),
            prefix_indptr=_indptr([len(g.key) for g in groups], dev),
            suffix_slots=torch.cat([s.slots[:s.length] for s in running]),
            suffix_indptr=_indptr([s.length for s in running], dev),
            group_indptr=_indptr(sizes, dev))
        ids = torch.tensor([s.tokens[-1] for s in running], dtype=torch.long, device=dev)
        logits = self.model.decode(ids, torch.tensor(positions, device=dev), new_slots, layout, self.store)
        self.stats["decode_steps"] += 1
        self._advance(list(running), logits, running, cfg, stop_set)


def _indptr(lengths: list[int], device) -> torch.Tensor:
    return torch.tensor([0] + lengths, dtype=torch.long).cumsum(0).to(device)

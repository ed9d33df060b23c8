"""The native engine's KV memory: lanes that attention reads in place (``rpo_kernels.lane_decode_attention``).

Per layer two pairs of buffers, K and V each:
- prefix lanes [layers, Lp, Hkv, Pcap, D]: one group's prompt + prefix per lane, written once by its prefill, read by
  all G sequences of the group;
- suffix lanes [layers, Ls, Hkv, Scap, D]: one running sequence's own tokens per lane.
A decode step reads both as views (lanes x heads x keys x D, the layout of a batched matmul), so no KV is gathered or
copied per step; the cost is padding: a lane has the capacity of the longest entry it may hold. The shape is chosen per
``generate`` call from its longest prompt + prefix and largest budget, within the KV budget, and only grows (a change
drops the cached prefixes).

Prefix entries are keyed (the prompt + prefix tokens) and tagged with the weight version that computed them; asking
under another version raises ``StalePrefixError``, so KV never outlives a weight update. A prefix lane
is held by its entry and by every sequence forked from it; it is free again when none is left.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from dataclasses import dataclass

import torch


class StalePrefixError(RuntimeError):
    """A stored prefix was asked for under a weight version other than the one that computed its KV."""


@dataclass(frozen=True)
class LaneShape:
    """Lanes and capacity (tokens per lane) of the prefix and suffix buffers."""

    prefix_lanes: int
    prefix_capacity: int
    suffix_lanes: int
    suffix_capacity: int

    def tokens(self) -> int:
        return self.prefix_lanes * self.prefix_capacity + self.suffix_lanes * self.suffix_capacity

    def covers(self, other: LaneShape) -> bool:
        return all(a >= b for a, b in zip(self.__dict__.values(), other.__dict__.values()))


@dataclass(frozen=True)
class LaneStats:
    shape: LaneShape | None
    prefixes: int  # stored prefix entries
    prefix_lanes_used: int  # lanes held by an entry or a running sequence
    sequences: int
    bytes_allocated: int


@dataclass(eq=False)
class _Entry:
    lane: int
    length: int
    version: int


class LaneKV:
    """Lane buffers plus the bookkeeping of who holds which lane (see the module docstring)."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device):
        self.dims = (num_layers, num_kv_heads, head_dim)
        self.dtype, self.device = dtype, torch.device(device)
        self.shape: LaneShape | None = None
        self.k_prefix = self.v_prefix = self.k_suffix = self.v_suffix = None
        self._entries: dict[Hashable, _Entry] = {}
        self._refs: list[int] = []
        self._free_prefix: list[int] = []
        self._free_suffix: list[int] = []
        self._running: dict[int, int] = {}  # suffix lane -> prefix lane

    def ensure(self, need: LaneShape) -> bool:
        """Make the buffers at least ``need`` (no sequence may be running). Returns True when they were replaced,
        which drops every cached prefix."""
        if self.shape is not None and self.shape.covers(need):
            return False
        if self._running:
            raise RuntimeError("LaneKV.ensure: sequences are still running")
        layers, hkv, d = self.dims
        self.k_prefix = self.v_prefix = self.k_suffix = self.v_suffix = None  # free the old buffers first
        self.shape = need
        p = (layers, need.prefix_lanes, hkv, need.prefix_capacity, d)
        s = (layers, need.suffix_lanes, hkv, need.suffix_capacity, d)
        self.k_prefix, self.v_prefix = (torch.zeros(p, dtype=self.dtype, device=self.device) for _ in range(2))
        self.k_suffix, self.v_suffix = (torch.zeros(s, dtype=self.dtype, device=self.device) for _ in range(2))
        self._entries.clear()
        self._refs = [0] * need.prefix_lanes
        self._free_prefix = list(range(need.prefix_lanes))
        self._free_suffix = list(range(need.suffix_lanes))
        return True

    # -- prefixes -----------------------------------------------------------------------------------------------
    def free_prefix_lanes(self) -> int:
        return len(self._free_prefix)

    def free_suffix_lanes(self) -> int:
        return len(self._free_suffix)

    def add_prefix(self, key: Hashable, length: int, version: int) -> int:
        """A free prefix lane (the lowest) for ``key``'s ``length`` tokens under ``version``; returns the lane."""
        if key in self._entries:
            self.drop_prefix(key)
        if not self._free_prefix:
            raise RuntimeError("LaneKV.add_prefix: no free prefix lane (the caller checks free_prefix_lanes)")
        if length > self.shape.prefix_capacity:
            raise ValueError(f"prefix of {length} tokens exceeds the lane capacity {self.shape.prefix_capacity}")
        lane = heapq.heappop(self._free_prefix)
        self._refs[lane] = 1
        self._entries[key] = _Entry(lane, length, version)
        return lane

    def prefix(self, key: Hashable, version: int) -> tuple[int, int]:
        """(lane, length) of a stored prefix; StalePrefixError under another weight version."""
        entry = self._entries[key]
        if entry.version != version:
            raise StalePrefixError(f"prefix {key!r} was computed under weight version {entry.version}, asked for "
                                   f"under version {version}")
        return entry.lane, entry.length

    def has_prefix(self, key: Hashable) -> bool:
        return key in self._entries

    def _release(self, lane: int) -> None:
        self._refs[lane] -= 1
        if self._refs[lane] == 0:
            heapq.heappush(self._free_prefix, lane)

    def drop_prefix(self, key: Hashable) -> None:
        """Forget the entry; its lane is free once no running sequence reads it."""
        self._release(self._entries.pop(key).lane)

    def evict_stale(self, version: int) -> int:
        stale = [k for k, e in self._entries.items() if e.version != version]
        for key in stale:
            self.drop_prefix(key)
        return len(stale)

    # -- sequences ----------------------------------------------------------------------------------------------
    def fork(self, key: Hashable, version: int) -> int:
        """Start a sequence on a stored prefix: it holds the prefix lane and gets the lowest free suffix lane."""
        lane, _ = self.prefix(key, version)
        if not self._free_suffix:
            raise RuntimeError("LaneKV.fork: no free suffix lane (the caller checks free_suffix_lanes)")
        seq = heapq.heappop(self._free_suffix)
        self._refs[lane] += 1
        self._running[seq] = lane
        return seq

    def free_sequence(self, seq: int) -> None:
        self._release(self._running.pop(seq))
        heapq.heappush(self._free_suffix, seq)

    # -- data ---------------------------------------------------------------------------------------------------
    def write_prefix(self, layer: int, lanes: torch.Tensor, positions: torch.Tensor, k, v) -> None:
        """K/V rows [T, Hkv, D] of ``layer`` to prefix lane ``lanes[t]`` at ``positions[t]`` ([T] int64 each)."""
        self.k_prefix[layer][lanes, :, positions] = k
        self.v_prefix[layer][lanes, :, positions] = v

    def write_suffix(self, layer: int, lanes: torch.Tensor, positions: torch.Tensor, k, v) -> None:
        self.k_suffix[layer][lanes, :, positions] = k
        self.v_suffix[layer][lanes, :, positions] = v

    def stats(self) -> LaneStats:
        n = 0 if self.shape is None else self.shape.tokens()
        elem = torch.empty((), dtype=self.dtype).element_size()
        used = sum(1 for r in self._refs if r > 0)
        return LaneStats(self.shape, len(self._entries), used, len(self._running),
                         2 * self.dims[0] * self.dims[1] * self.dims[2] * n * elem)

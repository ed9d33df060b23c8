"""Reference for ``shared_prefix_attention`` (cascade attention, extend form): G sequences of a group share a prefix.

Layout (packed/varlen): B groups, N sequences; group b owns sequences ``group[b]:group[b+1]`` and prefix KV rows
``prefix[b]:prefix[b+1]``; sequence i owns suffix KV rows ``suffix[i]:suffix[i+1]`` and query rows
``query[i]:query[i+1]``, its last suffix tokens. Query t of sequence i (of n_i queries, suffix length S_i) is suffix
position ``S_i - n_i + t``; it attends to the whole prefix of its group and causally to its suffix, keys
``j <= S_i - n_i + t``. With scores ``s_j = scale * q . k_j``::

    out = sum_j softmax(s)_j v_j   over [prefix of the group ; suffix of the sequence],   lse = log sum_j exp(s_j)

Computed as two partial attentions merged exactly by their log-sum-exp (``merge_attention_states``):
- prefix part: per group ONE batched matmul of all its queries (x the heads sharing a KV head, GQA) against the prefix,
  so the prefix is read once per group and never copied per sequence;
- suffix part: per sequence (causal), on views of its rows.
Queries are taken in chunks so a score block stays within ``CHUNK_ELEMENTS``. Plain torch ops on host integers (no
device synchronisation), so autograd flows into q and both K/V sets: this is the CPU training path and the test
oracle. Differentiated, autograd keeps each chunk's probabilities (memory O(queries x keys)); the Triton backward
recomputes them instead. (Decode, one query per sequence over KV lanes: ``lane_decode_attention``.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .merge_attention_states import merge_attention_states_ref

# A [Hkv, query rows x Hq/Hkv, keys] fp32 score block of at most this many elements exists at a time (64 MiB).
CHUNK_ELEMENTS = 1 << 24
# One part of the attention: queries q_start:q_start+q_len see KV rows kv_start:kv_start+kv_len, query t seeing keys
# j <= t + off (off >= kv_len - 1 means no mask).
Segment = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class RaggedLayout:
    """Host copy of the index pointers of one extend batch (validated by ``rpo_kernels.plan_shared_prefix``)."""

    group: tuple[int, ...]
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    query: tuple[int, ...]

    @property
    def num_groups(self) -> int:
        return len(self.group) - 1

    @property
    def num_sequences(self) -> int:
        return len(self.suffix) - 1

    def prefix_segments(self) -> list[Segment]:
        segs = []
        for b in range(self.num_groups):
            q0, q1 = self.query[self.group[b]], self.query[self.group[b + 1]]
            kv_len = self.prefix[b + 1] - self.prefix[b]
            segs.append((q0, q1 - q0, self.prefix[b], kv_len, kv_len))
        return segs

    def suffix_segments(self) -> list[Segment]:
        segs = []
        for i in range(self.num_sequences):
            q_len = self.query[i + 1] - self.query[i]
            kv_len = self.suffix[i + 1] - self.suffix[i]
            segs.append((self.query[i], q_len, self.suffix[i], kv_len, kv_len - q_len))
        return segs


def _empty(q: torch.Tensor, rows: int, dtype: torch.dtype):
    hq, d = q.shape[1], q.shape[2]
    return (q.new_zeros(rows, hq, d, dtype=dtype),
            q.new_full((rows, hq), float("-inf"), dtype=torch.float32))


def _attend(q, k, v, scale: float, off: int, dtype: torch.dtype):
    """q [M, Hq, D] against k/v [L, Hkv, D], query t seeing keys j <= t + off: (out [M, Hq, D], lse [M, Hq])."""
    m, hq, d = q.shape
    length, hkv = k.shape[0], k.shape[1]
    rep = hq // hkv
    if length == 0:
        return _empty(q, m, dtype)
    rows = q.to(dtype).reshape(m, hkv, rep, d).transpose(0, 1).reshape(hkv, m * rep, d)
    s = torch.matmul(rows, k.to(dtype).permute(1, 2, 0)).float() * scale  # [Hkv, M*rep, L]
    if off < length - 1:
        t = torch.arange(m, device=q.device).repeat_interleave(rep)
        s = s.masked_fill(torch.arange(length, device=q.device)[None, :] > (t[:, None] + off), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.softmax(s, dim=-1)  # every query sees at least one key: no empty row
    o = torch.matmul(p.to(dtype), v.to(dtype).transpose(0, 1))  # [Hkv, M*rep, D]
    return (o.reshape(hkv, m, rep, d).transpose(0, 1).reshape(m, hq, d),
            lse.reshape(hkv, m, rep).transpose(0, 1).reshape(m, hq))


def _segments(q, k, v, segments: list[Segment], scale: float, dtype: torch.dtype):
    """Partial attention of every segment; segments cover the query rows in order.

    A segment's queries are taken in chunks so that one [Hkv, rows, keys] score block stays within
    ``CHUNK_ELEMENTS`` (a group whose queries fit is one chunk: its prefix is read once).
    """
    outs, lses = [], []
    per_query = q.shape[1] * max(1, max((s[3] for s in segments), default=1))
    step = max(1, CHUNK_ELEMENTS // per_query)
    for q0, q_len, kv0, kv_len, off in segments:
        for c in range(0, q_len, step):
            n = min(step, q_len - c)
            o, lse = _attend(q[q0 + c:q0 + c + n], k[kv0:kv0 + kv_len], v[kv0:kv0 + kv_len], scale, off + c, dtype)
            outs.append(o)
            lses.append(lse)
    if not outs:
        return _empty(q, q.shape[0], dtype)
    return torch.cat(outs), torch.cat(lses)


def shared_prefix_attention_ref(q, prefix_k, prefix_v, suffix_k, suffix_v, layout: RaggedLayout, *,
                                softmax_scale=None, upcast=True):
    """Reference of ``rpo_kernels.shared_prefix_attention`` on validated inputs.

    q [total_q, Hq, D]; prefix_k/v [total_prefix, Hkv, D]; suffix_k/v [total_suffix, Hkv, D], one float dtype;
    ``layout`` the host index pointers (see the module). ``upcast`` computes in fp32 (else matmuls in the inputs'
    dtype, softmax in fp32). Returns (out [total_q, Hq, D] in q's dtype, lse [total_q, Hq] fp32 natural log).
    """
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    dtype = torch.float32 if upcast else q.dtype
    out_p, lse_p = _segments(q, prefix_k, prefix_v, layout.prefix_segments(), scale, dtype)
    out_s, lse_s = _segments(q, suffix_k, suffix_v, layout.suffix_segments(), scale, dtype)
    out, lse = merge_attention_states_ref(out_p, lse_p, out_s, lse_s)
    return out.to(q.dtype), lse

"""Reference for ``shared_prefix_attention`` (cascade attention): G sequences of a group share one prefix KV.

Layout (packed/varlen): B groups, N sequences; group b owns sequences ``group[b]:group[b+1]`` and prefix KV rows
``prefix[b]:prefix[b+1]``; sequence i owns suffix KV rows ``suffix[i]:suffix[i+1]`` and query rows
``query[i]:query[i+1]`` (decode: one query per sequence, ``query = 0..N``). Query t of sequence i (of n_i queries,
suffix length S_i) is suffix position ``S_i - n_i + t``; it attends to the whole prefix of its group and causally to
its suffix, keys ``j <= S_i - n_i + t``. With scores ``s_j = scale * q . k_j``::

    out = sum_j softmax(s)_j v_j   over [prefix of the group ; suffix of the sequence],   lse = log sum_j exp(s_j)

Computed as two partial attentions merged exactly by their log-sum-exp (``merge_attention_states``):
- prefix part: per group ONE batched matmul of all its queries (x the heads sharing a KV head, GQA) against the prefix,
  so the prefix is read once per group and never copied per sequence;
- suffix part: per sequence (causal), on views of its rows.
In the decode form (no causal mask) each part is instead ONE padded batched matmul over all groups / sequences when
the padded score block fits the budget: the Python loop over segments costs more than the padding on a CPU.
Queries are taken in chunks so a score block stays within ``CHUNK_ELEMENTS``. Plain torch ops, so autograd flows into
q and both K/V sets: this is the CPU training path and the test oracle. Differentiated, autograd keeps each chunk's
probabilities (memory O(queries x keys)); the Triton backward recomputes them instead.
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
    """Host copy of the index pointers of one call (validated by ``rpo_kernels.ops.attention``)."""

    group: tuple[int, ...]
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    query: tuple[int, ...]
    decode: bool

    @classmethod
    def from_tensors(cls, prefix_indptr, suffix_indptr, group_indptr, q_indptr=None) -> RaggedLayout:
        suffix = tuple(int(x) for x in suffix_indptr.tolist())
        decode = q_indptr is None
        query = tuple(range(len(suffix))) if decode else tuple(int(x) for x in q_indptr.tolist())
        return cls(tuple(int(x) for x in group_indptr.tolist()), tuple(int(x) for x in prefix_indptr.tolist()),
                   suffix, query, decode)

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
    ``CHUNK_ELEMENTS`` (a decode group is one chunk: its prefix is read once).
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


def _segments_padded(q, k, v, segments: list[Segment], scale: float, dtype: torch.dtype):
    """The same as ``_segments`` for segments without a causal mask (decode), all in ONE padded batched matmul.

    Rows of KV are gathered with ``index_select`` into [segments, max_len, Hkv, D] (a segment's prefix rows appear
    once, in that segment only); padded keys are masked. Used when the padded score block fits ``CHUNK_ELEMENTS``.
    """
    if k.shape[0] == 0:
        return _empty(q, q.shape[0], dtype)
    nseg = len(segments)
    hq, d = q.shape[1], q.shape[2]
    hkv = k.shape[1]
    rep = hq // hkv
    seg = torch.tensor(segments, dtype=torch.long, device=q.device)  # [nseg, 5]
    q0, q_len, kv0, kv_len = seg[:, 0:1], seg[:, 1:2], seg[:, 2:3], seg[:, 3:4]
    m_max, l_max = int(q_len.max()), int(kv_len.max())
    j = torch.arange(m_max, device=q.device)[None]
    q_idx = q0 + torch.minimum(j, (q_len - 1).clamp(min=0))
    q_ok = j < q_len
    j = torch.arange(l_max, device=q.device)[None]
    k_idx = (kv0 + torch.minimum(j, (kv_len - 1).clamp(min=0))).clamp(max=k.shape[0] - 1)
    k_ok = j < kv_len
    qs = q.to(dtype).index_select(0, q_idx.flatten()).view(nseg, m_max, hkv, rep, d)
    qs = qs.permute(0, 2, 1, 3, 4).reshape(nseg, hkv, m_max * rep, d)
    ks = k.to(dtype).index_select(0, k_idx.flatten()).view(nseg, l_max, hkv, d).permute(0, 2, 3, 1)
    vs = v.to(dtype).index_select(0, k_idx.flatten()).view(nseg, l_max, hkv, d).permute(0, 2, 1, 3)
    scores = torch.matmul(qs, ks).float() * scale  # [nseg, Hkv, M*rep, L]
    scores = scores.masked_fill(~k_ok[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    has_keys = k_ok.any(1)[:, None, None, None]
    probs = torch.where(has_keys, torch.softmax(scores, dim=-1), 0.0)
    out = torch.matmul(probs.to(dtype), vs)  # [nseg, Hkv, M*rep, D]
    out = out.reshape(nseg, hkv, m_max, rep, d).permute(0, 2, 1, 3, 4).reshape(nseg * m_max, hq, d)
    lse = lse.reshape(nseg, hkv, m_max, rep).permute(0, 2, 1, 3).reshape(nseg * m_max, hq)
    keep = q_ok.flatten()
    rows = q_idx.flatten()[keep]
    out_full, lse_full = _empty(q, q.shape[0], dtype)
    return out_full.index_copy(0, rows, out[keep]), lse_full.index_copy(0, rows, lse[keep])


def _padded_fits(q, segments: list[Segment]) -> bool:
    if not segments:
        return False
    m_max = max(s[1] for s in segments)
    l_max = max(s[3] for s in segments)
    return len(segments) * q.shape[1] * max(m_max, 1) * max(l_max, 1) <= CHUNK_ELEMENTS


def shared_prefix_attention_ref(q, prefix_k, prefix_v, prefix_indptr, suffix_k, suffix_v, suffix_indptr,
                                group_indptr, *, q_indptr=None, softmax_scale=None, upcast=True, layout=None):
    """Reference of ``rpo_kernels.shared_prefix_attention`` on validated inputs.

    q [total_q, Hq, D]; prefix_k/v [total_prefix, Hkv, D]; suffix_k/v [total_suffix, Hkv, D], one float dtype;
    indptrs as documented in the module. ``upcast`` computes in fp32 (else matmuls in the inputs' dtype, softmax in
    fp32). ``layout`` is the host copy of the indptrs when the caller already has it.
    Returns (out [total_q, Hq, D] in q's dtype, lse [total_q, Hq] fp32 natural log).
    """
    if layout is None:
        layout = RaggedLayout.from_tensors(prefix_indptr, suffix_indptr, group_indptr, q_indptr)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    dtype = torch.float32 if upcast else q.dtype
    parts = []
    for k, v, segments in ((prefix_k, prefix_v, layout.prefix_segments()),
                           (suffix_k, suffix_v, layout.suffix_segments())):
        padded = layout.decode and _padded_fits(q, segments)
        parts.append((_segments_padded if padded else _segments)(q, k, v, segments, scale, dtype))
    (out_p, lse_p), (out_s, lse_s) = parts
    out, lse = merge_attention_states_ref(out_p, lse_p, out_s, lse_s)
    return out.to(q.dtype), lse

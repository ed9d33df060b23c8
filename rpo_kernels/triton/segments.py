"""What the shared-prefix attention kernels (``shared_prefix_attention``, ``shared_prefix_attention_bwd``) share:
the segment tables' jit readers, the tile sizes, the launch options and the ahead-of-time specs' settings.

A segment is a run of query rows that sees a run of KV rows, query t seeing keys ``j <= t + off``; its table row is
(q_start, q_len, kv_start, kv_len, off), and a tile table row (segment, first row or key of the tile).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._dispatch import interpreter_on
from .common import spec_precision


@triton.jit
def _segment_fields(seg_ptr, tile_ptr, tile):
    """(first row or key of the tile, q_start, q_len, kv_start, kv_len, off) of tile ``tile``'s segment."""
    seg = tl.load(tile_ptr + tile * 2)
    first = tl.load(tile_ptr + tile * 2 + 1)
    q_start = tl.load(seg_ptr + seg * 5)
    q_len = tl.load(seg_ptr + seg * 5 + 1)
    kv_start = tl.load(seg_ptr + seg * 5 + 2)
    kv_len = tl.load(seg_ptr + seg * 5 + 3)
    off = tl.load(seg_ptr + seg * 5 + 4)
    return first, q_start, q_len, kv_start, kv_len, off


@triton.jit
def _segment_rows(seg_ptr, tile_ptr, tile, kvh, REP, BLOCK_M: tl.constexpr):
    """Rows of one M tile: (segment fields, row mask, query row index (int64), head, query index t in segment)."""
    m0, q_start, q_len, kv_start, kv_len, off = _segment_fields(seg_ptr, tile_ptr, tile)
    rows = m0 + tl.arange(0, BLOCK_M)
    row_ok = rows < q_len * REP
    t = rows // REP
    head = kvh * REP + rows % REP
    # last key any row of this tile may see (causal bound), exclusive
    kv_hi = tl.minimum(kv_len, tl.minimum((m0 + BLOCK_M - 1) // REP, q_len - 1) + off + 1)
    return m0, q_start, q_len, kv_start, kv_len, off, row_ok, (q_start + t).to(tl.int64), head, t, kv_hi


@dataclass(frozen=True)
class Tiles:
    """Tile sizes. M: (query, head) rows of a program or step; N: KV rows of a program or step."""

    prefix_m: int  # largest M tile of a prefix program (a group with fewer rows gets a smaller one, >= 16)
    decode_m: int  # M tile of a decode suffix program (its Hq/Hkv rows)
    n: int  # KV rows per forward step
    bwd_m: int  # query rows per dk/dv step
    bwd_n: int  # KV rows per dk/dv program and per dq step


# 16-bit tiles feed the tensor cores; fp32 (IEEE FMA dots, 4-byte tiles) uses smaller ones on a GPU. The interpreter
# runs the 16-bit tiles for every dtype: it pays per program and per step, so fewer, larger tiles test faster.
TILES_16BIT = Tiles(prefix_m=64, decode_m=16, n=64, bwd_m=64, bwd_n=64)
TILES_FP32 = Tiles(prefix_m=32, decode_m=16, n=32, bwd_m=32, bwd_n=32)
# Launch options on a GPU of the forward and backward kernels; the ahead-of-time lowering check compiles with the
# same ones.
LAUNCH_OPTIONS = dict(num_warps=4, num_stages=2)
# A prefix split covers at least this many keys.
MIN_KEYS_PER_SPLIT = 256


def tiles_for(dtype: torch.dtype) -> Tiles:
    return TILES_FP32 if dtype == torch.float32 and not interpreter_on() else TILES_16BIT


# Lowered ahead of time, dtype -> head dims: bf16 (training and rollout) at both dims; fp16 runs the same 16-bit code
# and fp32 (FMA dots) is the slowest to compile, so one dim each. Other combinations compile on first use.
SPEC_HEAD_DIMS = {"bf16": (64, 128), "fp16": (128,), "fp32": (64,)}


def spec_settings(dt: str) -> tuple[dict, Tiles]:
    """(precision constexprs, tiles) the launchers use on a GPU for storage dtype ``dt`` ("bf16" | "fp16" | "fp32")."""
    return spec_precision(dt), TILES_FP32 if dt == "fp32" else TILES_16BIT

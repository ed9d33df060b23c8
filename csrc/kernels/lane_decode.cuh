// Lane decode attention (shared-prefix, "cascade") on tensor cores: one query token per sequence, KV read in place
// from its lanes (api.h: LaneDecodeParams).
//
// A group of G sequences continues ONE prefix lane. For KV head h, the G sequences x R query heads that read h
// (R = num_q_heads / num_kv_heads) are stacked into M = G * R query rows and processed together by one CTA, so each
// prefix K/V tile is staged through shared memory once and used by all M rows (for M > kRows the CTA loops over
// row blocks of kRows and re-reads the tiles, then from L2). Long prefixes are split into chunks (split-KV) so
// that the grid fills the GPU; every chunk writes a partial output and its log-sum-exp. Each sequence's own suffix
// is one more partial, computed by the same code with M = R. combine_splits_kernel (merge_states.cuh) merges the
// partials of every (sequence, head) exactly by their LSEs.
//
// Per CTA: 4 warps, each owning 16 query rows. Per KV tile (kTokens tokens, double-buffered with cp.async):
//   S = Q K^T (wmma 16x16x16, fp32 accumulate) -> online softmax in base 2 (fp32) -> P (storage type) ->
//   O = alpha * O + P V (wmma), with O kept in registers in a fixed lane layout (lane -> row lane/2, columns
//   (lane%2)*8 .. +8 of each 16-wide block), the same row a lane owns in the softmax.
#pragma once

#include <mma.h>

#include "api.h"
#include "common.cuh"
#include "merge_states.cuh"

namespace rpo {

template <typename T, int D>
struct DecodeConfig {
  static_assert(sizeof(T) == 2, "the tensor-core decode kernel takes fp16 or bf16 storage");
  static_assert(D % 32 == 0, "head dim must be a multiple of 32");
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRows = kWarps * 16;     // query rows per pass
  static constexpr int kTokens = 4096 / D;      // KV tokens per tile: 8 KiB of K and 8 KiB of V
  static constexpr int kKvLd = D + 8;           // pitches (elements), padded against bank conflicts;
  static constexpr int kQLd = D + 8;            // wmma needs multiples of 16 bytes and 32-byte aligned tiles
  static constexpr int kSLd = kTokens + 4;
  static constexpr int kPLd = kTokens + 8;
  static constexpr int kChunks = D * 2 / 16;    // 16-byte chunks per row
  static constexpr size_t kTileBytes = size_t(kTokens) * kKvLd * 2;
  static constexpr size_t kStageBytes = 2 * kTileBytes;  // K then V
  static constexpr size_t kScoreBytes = 16 * kSLd * 4;
  static constexpr size_t kProbBytes = 16 * kPLd * 2;
  static constexpr size_t kOStageBytes = 16 * 16 * 4;
  static constexpr size_t kQBytes = 16 * kQLd * 2;
  static constexpr size_t kTileScratch = kScoreBytes + kProbBytes + kOStageBytes;
  static constexpr size_t kWarpScratch = kTileScratch > kQBytes ? kTileScratch : kQBytes;
  static constexpr size_t kSmemBytes = 2 * kStageBytes + kWarps * kWarpScratch;
  static_assert(kTileBytes % 32 == 0 && kScoreBytes % 32 == 0 && kProbBytes % 32 == 0 && kWarpScratch % 32 == 0,
                "shared-memory regions must stay 32-byte aligned for wmma");
};

// One KV stream seen by a CTA: rows [0, len) of one KV head, `*_stride` elements apart.
template <typename T>
struct KvSource {
  const T* k;
  const T* v;
  int64_t k_stride;
  int64_t v_stride;
  int len;
};

// Where query row `row` (0 <= row < M) of a work item lives: query order[seq0 + row / R] (seq0 + row / R when order
// is null), head hkv * R + row % R.
struct RowMap {
  const int32_t* order;
  int seq0;
  int rows;
  int group;  // R
  int hkv;
  int num_q_heads;

  __device__ __forceinline__ int seq(int row) const { return order ? order[seq0 + row / group] : seq0 + row / group; }
  __device__ __forceinline__ int head(int row) const { return hkv * group + row % group; }
  __device__ __forceinline__ int64_t flat(int row) const { return int64_t(seq(row)) * num_q_heads + head(row); }
};

// All threads of the CTA: stage tile `tile` of K and V into shared memory, zero-filling rows past the end.
template <typename T, int D>
__device__ __forceinline__ void load_kv_tile(T* ks, T* vs, const KvSource<T>& kv, int tile) {
  using Cfg = DecodeConfig<T, D>;
  const int first = tile * Cfg::kTokens;
  for (int c = threadIdx.x; c < Cfg::kTokens * Cfg::kChunks; c += Cfg::kThreads) {
    const int r = c / Cfg::kChunks;
    const int col = (c % Cfg::kChunks) * 8;
    const bool ok = first + r < kv.len;
    const int64_t tok = ok ? first + r : 0;
    cp_async_16(ks + r * Cfg::kKvLd + col, kv.k + tok * kv.k_stride + col, ok);
    cp_async_16(vs + r * Cfg::kKvLd + col, kv.v + tok * kv.v_stride + col, ok);
  }
}

// Attention of query rows [row0, row0 + kRows) of `map` over `kv`, written as partial `split`.
// Called by all threads of the CTA (it synchronises the CTA).
template <typename T, int D>
__device__ void attend_rows(const LaneDecodeParams& p, unsigned char* smem, const KvSource<T>& kv,
                            const RowMap& map, int row0, int split) {
  using Cfg = DecodeConfig<T, D>;
  namespace wmma = nvcuda::wmma;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int r = lane / 2;     // the row (within the warp's 16) this lane owns
  const int half = lane % 2;  // and which half of the tile's columns
  const int warp_row0 = row0 + warp * 16;
  const bool active = warp_row0 < map.rows;
  const int row = warp_row0 + r;
  const bool row_valid = row < map.rows;
  const int64_t rows_total = int64_t(p.num_seqs) * p.num_q_heads;
  float* part_lse = p.partial_lse + split * rows_total;
  float* part_o = p.partial_o + split * rows_total * D;

  if (kv.len == 0) {  // CTA-uniform: an empty chunk is an empty partial
    if (row_valid && half == 0) part_lse[map.flat(row)] = -INFINITY;
    return;
  }

  unsigned char* scratch = smem + 2 * Cfg::kStageBytes + warp * Cfg::kWarpScratch;
  float* s_tile = reinterpret_cast<float*>(scratch);
  T* p_tile = reinterpret_cast<T*>(scratch + Cfg::kScoreBytes);
  float* o_stage = reinterpret_cast<float*>(scratch + Cfg::kScoreBytes + Cfg::kProbBytes);
  T* q_stage = reinterpret_cast<T*>(scratch);  // used before the first tile only

  const int num_tiles = static_cast<int>(ceil_div(kv.len, Cfg::kTokens));
  load_kv_tile<T, D>(reinterpret_cast<T*>(smem), reinterpret_cast<T*>(smem + Cfg::kTileBytes), kv, 0);
  cp_async_commit();

  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> q_frag[D / 16];
  if (active) {
    const T* q = static_cast<const T*>(p.q);
    for (int c = lane; c < 16 * Cfg::kChunks; c += 32) {
      const int rr = c / Cfg::kChunks;
      const int col = (c % Cfg::kChunks) * 8;
      uint4 val = make_uint4(0, 0, 0, 0);
      if (warp_row0 + rr < map.rows) {
        const int qr = warp_row0 + rr;
        val = *reinterpret_cast<const uint4*>(q + map.seq(qr) * p.q_stride_n + map.head(qr) * p.q_stride_h + col);
      }
      *reinterpret_cast<uint4*>(q_stage + rr * Cfg::kQLd + col) = val;
    }
    __syncwarp();
#pragma unroll
    for (int k = 0; k < D / 16; ++k) wmma::load_matrix_sync(q_frag[k], q_stage + k * 16, Cfg::kQLd);
    __syncwarp();
  }

  const float scale_log2 = p.softmax_scale * kLog2e;
  constexpr int kHalf = Cfg::kTokens / 2;
  float m_run = -INFINITY;  // running max of the scaled scores (base 2)
  float l_run = 0.f;        // running sum of 2^(score - m_run)
  float o_acc[D / 16][8];
#pragma unroll
  for (int j = 0; j < D / 16; ++j)
#pragma unroll
    for (int e = 0; e < 8; ++e) o_acc[j][e] = 0.f;

  for (int t = 0; t < num_tiles; ++t) {
    if (t + 1 < num_tiles) {
      unsigned char* next = smem + ((t + 1) % 2) * Cfg::kStageBytes;
      load_kv_tile<T, D>(reinterpret_cast<T*>(next), reinterpret_cast<T*>(next + Cfg::kTileBytes), kv, t + 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (active) {
      const T* ks = reinterpret_cast<const T*>(smem + (t % 2) * Cfg::kStageBytes);
      const T* vs = reinterpret_cast<const T*>(smem + (t % 2) * Cfg::kStageBytes + Cfg::kTileBytes);
      const int valid = min(Cfg::kTokens, kv.len - t * Cfg::kTokens);
#pragma unroll
      for (int j = 0; j < Cfg::kTokens / 16; ++j) {  // S = Q K^T, 16 tokens at a time
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.f);
#pragma unroll
        for (int k = 0; k < D / 16; ++k) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kb;
          wmma::load_matrix_sync(kb, ks + j * 16 * Cfg::kKvLd + k * 16, Cfg::kKvLd);
          wmma::mma_sync(acc, q_frag[k], kb, acc);
        }
        wmma::store_matrix_sync(s_tile + j * 16, acc, Cfg::kSLd, wmma::mem_row_major);
      }
      __syncwarp();

      const float* srow = s_tile + r * Cfg::kSLd + half * kHalf;
      T* prow = p_tile + r * Cfg::kPLd + half * kHalf;
      float mx = -INFINITY;
#pragma unroll
      for (int c = 0; c < kHalf; ++c)
        if (half * kHalf + c < valid) mx = fmaxf(mx, srow[c] * scale_log2);
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      const float m_new = fmaxf(m_run, mx);  // finite: every tile has at least one valid token
      const float alpha = exp2f(m_run - m_new);
      float sum = 0.f;
#pragma unroll
      for (int c = 0; c < kHalf; ++c) {
        const float pr = half * kHalf + c < valid ? exp2f(srow[c] * scale_log2 - m_new) : 0.f;
        prow[c] = from_float<T>(pr);
        sum += pr;
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      l_run = l_run * alpha + sum;
      m_run = m_new;
      __syncwarp();

      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> p_frag[Cfg::kTokens / 16];
#pragma unroll
      for (int k = 0; k < Cfg::kTokens / 16; ++k) wmma::load_matrix_sync(p_frag[k], p_tile + k * 16, Cfg::kPLd);
#pragma unroll
      for (int j = 0; j < D / 16; ++j) {  // O = alpha * O + P V, 16 output columns at a time
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.f);
#pragma unroll
        for (int k = 0; k < Cfg::kTokens / 16; ++k) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vb;
          wmma::load_matrix_sync(vb, vs + k * 16 * Cfg::kKvLd + j * 16, Cfg::kKvLd);
          wmma::mma_sync(acc, p_frag[k], vb, acc);
        }
        wmma::store_matrix_sync(o_stage, acc, 16, wmma::mem_row_major);
        __syncwarp();
#pragma unroll
        for (int e = 0; e < 8; ++e) o_acc[j][e] = o_acc[j][e] * alpha + o_stage[r * 16 + half * 8 + e];
        __syncwarp();
      }
    }
    __syncthreads();  // the stage just read is refilled by the next iteration
  }

  if (row_valid) {  // implies active
    const float inv = 1.f / l_run;  // l_run >= 1: the maximum contributes 2^0
    float* dst = part_o + map.flat(row) * D + half * 8;
#pragma unroll
    for (int j = 0; j < D / 16; ++j) {
      *reinterpret_cast<float4*>(dst + j * 16) =
          make_float4(o_acc[j][0] * inv, o_acc[j][1] * inv, o_acc[j][2] * inv, o_acc[j][3] * inv);
      *reinterpret_cast<float4*>(dst + j * 16 + 4) =
          make_float4(o_acc[j][4] * inv, o_acc[j][5] * inv, o_acc[j][6] * inv, o_acc[j][7] * inv);
    }
    if (half == 0) part_lse[map.flat(row)] = (m_run + log2f(l_run)) * kLn2;
  }
}

// The KV of `len` tokens from `first` in lane `lane`, KV head `hkv`, of one side.
template <typename T>
__device__ __forceinline__ KvSource<T> lane_source(const LaneKv& side, int lane, int hkv, int first, int len) {
  const int64_t offset = lane * side.stride_lane + hkv * side.stride_head + first * side.stride_token;
  return {static_cast<const T*>(side.k) + offset, static_cast<const T*>(side.v) + offset, side.stride_token,
          side.stride_token, len};
}

// Grid: x = num_groups * max_splits prefix chunks, then num_seqs suffixes; y = KV head. Block: kThreads.
template <typename T, int D>
__global__ void __launch_bounds__(DecodeConfig<T, D>::kThreads) lane_decode_kernel(const LaneDecodeParams p) {
  using Cfg = DecodeConfig<T, D>;
  extern __shared__ __align__(128) unsigned char smem[];
  const int hkv = blockIdx.y;
  const int prefix_items = p.num_groups * p.max_splits;
  RowMap map{nullptr, 0, 0, p.num_q_heads / p.num_kv_heads, hkv, p.num_q_heads};
  KvSource<T> kv;
  int split;
  if (static_cast<int>(blockIdx.x) < prefix_items) {
    const int b = blockIdx.x / p.max_splits;
    split = blockIdx.x % p.max_splits;
    map.order = p.order;
    map.seq0 = p.group_indptr[b];
    map.rows = (p.group_indptr[b + 1] - map.seq0) * map.group;
    const int plen = p.group_len[b];
    const int chunk = static_cast<int>(ceil_div(ceil_div(plen, p.max_splits), Cfg::kTokens) * Cfg::kTokens);
    const int start = min(split * chunk, plen);
    kv = lane_source<T>(p.prefix, p.group_lane[b], hkv, start, min(chunk, plen - start));
  } else {
    const int n = blockIdx.x - prefix_items;
    split = p.max_splits;
    map.seq0 = n;
    map.rows = map.group;
    kv = lane_source<T>(p.suffix, p.suffix_lane[n], hkv, 0, p.suffix_len[n]);
  }
  for (int row0 = 0; row0 < map.rows; row0 += Cfg::kRows) attend_rows<T, D>(p, smem, kv, map, row0, split);
}

}  // namespace rpo

// Exact merges of partial softmax attentions by their log-sum-exp (LSE, natural log), fp32 math.
//
// A partial attention over a key set K_s gives o_s = sum_{j in K_s} softmax(s)_j v_j and lse_s = log sum exp(s_j).
// For disjoint key sets, with m = max_s lse_s and w_s = exp(lse_s - m):
//     out = sum_s w_s o_s / sum_s w_s,      lse = m + log(sum_s w_s).
// An empty partial (lse = -inf) contributes nothing; when every partial is empty, out = 0 and lse = -inf.
#pragma once

#include "common.cuh"

namespace rpo {

// combine_splits_kernel: num_splits fp32 partials per row -> one output row in T. One warp per row, each lane owns
// D / 32 consecutive elements.
//   partial_o: [num_splits, rows, D] fp32 contiguous.   partial_lse: [num_splits, rows] fp32.
//   out: [rows, D] in T contiguous.                      lse: [rows] fp32.
template <typename T, int D>
__global__ void combine_splits_kernel(const float* __restrict__ partial_o, const float* __restrict__ partial_lse,
                                      int num_splits, int64_t rows, T* __restrict__ out, float* __restrict__ lse) {
  static_assert(D % 32 == 0, "head dim must be a multiple of 32");
  constexpr int kPerLane = D / 32;
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  float m = -INFINITY;
  for (int s = 0; s < num_splits; ++s) m = fmaxf(m, partial_lse[s * rows + row]);
  float acc[kPerLane];
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) acc[e] = 0.f;
  float total = 0.f;
  if (!lse_is_empty(m)) {
    for (int s = 0; s < num_splits; ++s) {
      const float l = partial_lse[s * rows + row];
      if (lse_is_empty(l)) continue;
      const float w = expf(l - m);
      total += w;
      Vec<float, kPerLane> o;
      o.load(partial_o + (s * rows + row) * D + lane * kPerLane);
#pragma unroll
      for (int e = 0; e < kPerLane; ++e) acc[e] += w * o.v[e];
    }
  }
  const float inv = total > 0.f ? 1.f / total : 0.f;
  Vec<T, kPerLane> r;
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) r.v[e] = from_float<T>(acc[e] * inv);
  r.store(out + row * D + lane * kPerLane);
  if (lane == 0) lse[row] = total > 0.f ? m + logf(total) : -INFINITY;
}

}  // namespace rpo

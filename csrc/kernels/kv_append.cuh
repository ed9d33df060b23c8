// kv_append: scatter new K/V rows into a slot-addressed (paged) cache.
//   k_cache[slots[i], :] = k_new[i, :],  v_cache[slots[i], :] = v_new[i, :]   for i in [0, num_tokens).
// A row is num_kv_heads x head_dim contiguous elements. A paged store [num_blocks, block_size, Hkv, D] is the same
// thing with slot = block * block_size + offset. slot < 0 is padding (skipped); slot >= num_slots is skipped as well,
// so a bad slot can never write out of bounds (the torch wrapper reports it as an error beforehand).
#pragma once

#include "common.cuh"

namespace rpo {

// One thread per VEC elements of one new row.
//   k_new, v_new: row i at k_new + i * k_new_stride (elements).   slots: [num_tokens] int64.
//   k_cache, v_cache: [num_slots, row_elems] contiguous.            row_elems % VEC == 0.
template <typename T, int VEC>
__global__ void kv_append_kernel(const T* __restrict__ k_new, int64_t k_new_stride, const T* __restrict__ v_new,
                                 int64_t v_new_stride, const int64_t* __restrict__ slots, int64_t num_tokens,
                                 int64_t row_elems, T* __restrict__ k_cache, T* __restrict__ v_cache,
                                 int64_t num_slots) {
  const int64_t vecs_per_row = row_elems / VEC;
  const int64_t total = num_tokens * vecs_per_row;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t tok = i / vecs_per_row;
    const int64_t col = (i - tok * vecs_per_row) * VEC;
    const int64_t slot = slots[tok];
    if (slot < 0 || slot >= num_slots) continue;
    Vec<T, VEC> k;
    Vec<T, VEC> v;
    k.load(k_new + tok * k_new_stride + col);
    v.load(v_new + tok * v_new_stride + col);
    k.store(k_cache + slot * row_elems + col);
    v.store(v_cache + slot * row_elems + col);
  }
}

}  // namespace rpo

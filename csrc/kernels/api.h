// Host API of the torch-free kernel library (librpo_kernels_cuda): raw device pointers, a CUDA stream, and a
// cudaError_t back. Callers (the torch launchers in csrc/ops/, or any C++ engine) own every buffer.
// Compiles with a plain host compiler: no device code and no torch here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace rpo {

enum class DType { kFloat32, kFloat16, kBFloat16 };

// ---- merge_attention_states --------------------------------------------------------------------------------------
// out = exact LSE merge of (out_a, lse_a) and (out_b, lse_b); rows = tokens x heads, each row head_dim contiguous
// elements of `dtype`; lse_* fp32 natural log. All pointers 16-byte aligned for the vectorised path (else scalar).
cudaError_t merge_attention_states(const void* out_a, const float* lse_a, const void* out_b, const float* lse_b,
                                   void* out, float* lse, int64_t rows, int head_dim, DType dtype,
                                   cudaStream_t stream);

// ---- shared-prefix decode attention ------------------------------------------------------------------------------
// One query per sequence. Sequences group_indptr[b]:group_indptr[b+1] form group b and share the prefix KV rows
// prefix_indptr[b]:prefix_indptr[b+1]; sequence i also attends to its own suffix KV rows
// suffix_indptr[i]:suffix_indptr[i+1]. Query head h reads KV head h / (num_q_heads / num_kv_heads).
// Strides are in elements; the last (head_dim) dimension is contiguous; every row start is 16-byte aligned.
struct SharedPrefixDecodeParams {
  const void* q;  // [num_seqs, num_q_heads, head_dim]
  int64_t q_stride_n, q_stride_h;
  const void* prefix_k;  // [total_prefix_tokens, num_kv_heads, head_dim]
  int64_t prefix_k_stride_t, prefix_k_stride_h;
  const void* prefix_v;
  int64_t prefix_v_stride_t, prefix_v_stride_h;
  const void* suffix_k;  // [total_suffix_tokens, num_kv_heads, head_dim]
  int64_t suffix_k_stride_t, suffix_k_stride_h;
  const void* suffix_v;
  int64_t suffix_v_stride_t, suffix_v_stride_h;
  const int32_t* prefix_indptr;  // [num_groups + 1]
  const int32_t* suffix_indptr;  // [num_seqs + 1]
  const int32_t* group_indptr;   // [num_groups + 1], group_indptr[num_groups] == num_seqs
  void* out;                     // [num_seqs, num_q_heads, head_dim] contiguous, dtype of q
  float* lse;                    // [num_seqs, num_q_heads] fp32 natural log
  float* partial_o;              // workspace, shared_prefix_decode_workspace_floats(...) floats in all:
  float* partial_lse;            //   partial_o [max_splits + 1, num_seqs * num_q_heads, head_dim], then
                                 //   partial_lse [max_splits + 1, num_seqs * num_q_heads]
  int num_groups, num_seqs, num_q_heads, num_kv_heads, head_dim;
  int max_splits;  // prefix chunks per group, from shared_prefix_decode_num_splits
  float softmax_scale;
  DType dtype;  // kFloat16 or kBFloat16
};

// How many chunks to split each group's prefix into so that the launch fills `num_sms` multiprocessors
// (1 when the groups x KV heads already fill them; never chunks shorter than ~256 tokens on average).
int shared_prefix_decode_num_splits(int num_groups, int num_kv_heads, int64_t total_prefix_tokens, int num_sms);

// Elements of the fp32 workspace: partial outputs then partial LSEs, (max_splits + 1) splits each.
int64_t shared_prefix_decode_workspace_floats(int num_seqs, int num_q_heads, int head_dim, int max_splits);

// Head dims and dtypes the decode kernel is built for.
bool shared_prefix_decode_supports(int head_dim, DType dtype);

cudaError_t shared_prefix_decode(const SharedPrefixDecodeParams& params, cudaStream_t stream);

// ---- kv_append ---------------------------------------------------------------------------------------------------
// k_cache[slots[i]] = k_new[i], v_cache[slots[i]] = v_new[i] for every token i: rows of row_elems contiguous
// elements (num_kv_heads x head_dim). New rows are new_stride_* elements apart; the caches are [num_slots, row_elems]
// contiguous. A slot < 0 marks padding and is skipped; a slot >= num_slots is skipped too (callers validate).
cudaError_t kv_append(const void* k_new, int64_t k_new_stride, const void* v_new, int64_t v_new_stride,
                      const int64_t* slots, int64_t num_tokens, int64_t row_elems, void* k_cache, void* v_cache,
                      int64_t num_slots, DType dtype, cudaStream_t stream);

// Multiprocessor count of `device`, cached after the first query (0 when it cannot be queried).
int device_sm_count(int device);

}  // namespace rpo

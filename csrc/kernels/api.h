// Host API of the torch-free kernel library (librpo_kernels_cuda): raw device pointers, a CUDA stream, and a
// cudaError_t back. Callers (the torch launchers in csrc/ops/, or any C++ engine) own every buffer.
// Compiles with a plain host compiler: no device code and no torch here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace rpo {

enum class DType { kFloat32, kFloat16, kBFloat16 };

// ---- lane decode attention ---------------------------------------------------------------------------------------
// One query per sequence over KV kept in lanes, read in place: lane buffers [lanes, num_kv_heads, capacity, head_dim]
// addressed by (lane, head, token) strides in elements, head_dim contiguous, every row start 16-byte aligned; the K
// and V buffers of a side share their strides. Queries are placed by int32 tables (built once per decode step):
//   group b (of num_groups) is the queries order[group_indptr[b]:group_indptr[b+1]]; they share the first
//   group_len[b] keys of prefix lane group_lane[b];
//   query n also attends to the first suffix_len[n] keys of its own suffix lane suffix_lane[n].
// Query head h reads KV head h / (num_q_heads / num_kv_heads). Output rows follow the query index n.
struct LaneKv {
  const void* k;
  const void* v;
  int64_t stride_lane, stride_head, stride_token;
};

struct LaneDecodeParams {
  const void* q;  // [num_seqs, num_q_heads, head_dim]
  int64_t q_stride_n, q_stride_h;
  LaneKv prefix, suffix;
  const int32_t* group_indptr;  // [num_groups + 1], group_indptr[num_groups] == num_seqs
  const int32_t* group_lane;    // [num_groups]
  const int32_t* group_len;     // [num_groups]
  const int32_t* order;         // [num_seqs]: query indices, group after group
  const int32_t* suffix_lane;   // [num_seqs]
  const int32_t* suffix_len;    // [num_seqs]
  void* out;                    // [num_seqs, num_q_heads, head_dim] contiguous, dtype of q
  float* lse;                   // [num_seqs, num_q_heads] fp32 natural log
  float* partial_o;             // workspace, lane_decode_workspace_floats(...) floats in all:
  float* partial_lse;           //   partial_o [max_splits + 1, num_seqs * num_q_heads, head_dim], then
                                //   partial_lse [max_splits + 1, num_seqs * num_q_heads]
  int num_groups, num_seqs, num_q_heads, num_kv_heads, head_dim;
  int max_splits;  // prefix chunks per group, from lane_decode_num_splits
  float softmax_scale;
  DType dtype;  // kFloat16 or kBFloat16
};

// How many chunks to split each group's prefix into so that the launch fills `num_sms` multiprocessors
// (1 when the groups x KV heads already fill them; never chunks shorter than ~256 tokens on average).
int lane_decode_num_splits(int num_groups, int num_kv_heads, int64_t total_prefix_tokens, int num_sms);

// Elements of the fp32 workspace: partial outputs then partial LSEs, (max_splits + 1) splits each.
int64_t lane_decode_workspace_floats(int num_seqs, int num_q_heads, int head_dim, int max_splits);

// Head dims and dtypes the decode kernel is built for.
bool lane_decode_supports(int head_dim, DType dtype);

cudaError_t lane_decode(const LaneDecodeParams& params, cudaStream_t stream);

// Multiprocessor count of `device`, cached after the first query (0 when it cannot be queried).
int device_sm_count(int device);

}  // namespace rpo

// C entry points over the torch-free kernel library built for CPU emulation (see emu.h), for ctypes in the tests.
// dtype codes: 0 = float32, 1 = float16, 2 = bfloat16.
#include <cstdint>

#include "api.h"

namespace rpo {
alignas(128) unsigned char smem[rpo_emu::kSharedBytes];  // the dynamic shared memory of the running block
}

namespace {
rpo::DType dtype_of(int code) {
  return code == 0 ? rpo::DType::kFloat32 : code == 1 ? rpo::DType::kFloat16 : rpo::DType::kBFloat16;
}
}  // namespace

extern "C" {

int emu_num_splits(int num_groups, int num_kv_heads, int64_t total_prefix_tokens, int num_sms) {
  return rpo::lane_decode_num_splits(num_groups, num_kv_heads, total_prefix_tokens, num_sms);
}

int64_t emu_workspace_floats(int num_seqs, int num_q_heads, int head_dim, int max_splits) {
  return rpo::lane_decode_workspace_floats(num_seqs, num_q_heads, head_dim, max_splits);
}

// strides: q (n, h), prefix lanes (lane, head, token), suffix lanes (lane, head, token), in elements (K and V of a
// side share them). tables: the int32 tables of rpo::LaneDecodeParams, in its order.
// sizes: num_groups, num_seqs, num_q_heads, num_kv_heads, head_dim, max_splits.
int emu_lane_decode(const void* q, const void* prefix_k, const void* prefix_v, const void* suffix_k,
                    const void* suffix_v, const int64_t* strides, const int32_t* tables, void* out, float* lse,
                    float* workspace, const int* sizes, float softmax_scale, int dtype) {
  rpo::LaneDecodeParams p{};
  p.q = q;
  p.q_stride_n = strides[0];
  p.q_stride_h = strides[1];
  p.prefix = {prefix_k, prefix_v, strides[2], strides[3], strides[4]};
  p.suffix = {suffix_k, suffix_v, strides[5], strides[6], strides[7]};
  p.num_groups = sizes[0];
  p.num_seqs = sizes[1];
  p.num_q_heads = sizes[2];
  p.num_kv_heads = sizes[3];
  p.head_dim = sizes[4];
  p.max_splits = sizes[5];
  p.group_indptr = tables;
  p.group_lane = tables + p.num_groups + 1;
  p.group_len = p.group_lane + p.num_groups;
  p.order = p.group_len + p.num_groups;
  p.suffix_lane = p.order + p.num_seqs;
  p.suffix_len = p.suffix_lane + p.num_seqs;
  p.out = out;
  p.lse = lse;
  const int64_t splits = p.max_splits + 1;
  p.partial_o = workspace;
  p.partial_lse = workspace + splits * p.num_seqs * p.num_q_heads * p.head_dim;
  p.softmax_scale = softmax_scale;
  p.dtype = dtype_of(dtype);
  return rpo::lane_decode(p, nullptr);
}
}

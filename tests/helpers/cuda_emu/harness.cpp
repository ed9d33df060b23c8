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

int emu_merge_attention_states(const void* out_a, const float* lse_a, const void* out_b, const float* lse_b,
                               void* out, float* lse, int64_t rows, int head_dim, int dtype) {
  return rpo::merge_attention_states(out_a, lse_a, out_b, lse_b, out, lse, rows, head_dim, dtype_of(dtype),
                                     nullptr);
}

int emu_kv_append(const void* k_new, int64_t k_new_stride, const void* v_new, int64_t v_new_stride,
                  const int64_t* slots, int64_t num_tokens, int64_t row_elems, void* k_cache, void* v_cache,
                  int64_t num_slots, int dtype) {
  return rpo::kv_append(k_new, k_new_stride, v_new, v_new_stride, slots, num_tokens, row_elems, k_cache, v_cache,
                        num_slots, dtype_of(dtype), nullptr);
}

int emu_num_splits(int num_groups, int num_kv_heads, int64_t total_prefix_tokens, int num_sms) {
  return rpo::shared_prefix_decode_num_splits(num_groups, num_kv_heads, total_prefix_tokens, num_sms);
}

int64_t emu_workspace_floats(int num_seqs, int num_q_heads, int head_dim, int max_splits) {
  return rpo::shared_prefix_decode_workspace_floats(num_seqs, num_q_heads, head_dim, max_splits);
}

// strides: q (n, h), prefix_k (t, h), prefix_v (t, h), suffix_k (t, h), suffix_v (t, h), in elements.
// sizes: num_groups, num_seqs, num_q_heads, num_kv_heads, head_dim, max_splits.
int emu_shared_prefix_decode(const void* q, const void* prefix_k, const void* prefix_v, const void* suffix_k,
                             const void* suffix_v, const int64_t* strides, const int32_t* prefix_indptr,
                             const int32_t* suffix_indptr, const int32_t* group_indptr, void* out, float* lse,
                             float* workspace, const int* sizes, float softmax_scale, int dtype) {
  rpo::SharedPrefixDecodeParams p{};
  p.q = q;
  p.q_stride_n = strides[0];
  p.q_stride_h = strides[1];
  p.prefix_k = prefix_k;
  p.prefix_k_stride_t = strides[2];
  p.prefix_k_stride_h = strides[3];
  p.prefix_v = prefix_v;
  p.prefix_v_stride_t = strides[4];
  p.prefix_v_stride_h = strides[5];
  p.suffix_k = suffix_k;
  p.suffix_k_stride_t = strides[6];
  p.suffix_k_stride_h = strides[7];
  p.suffix_v = suffix_v;
  p.suffix_v_stride_t = strides[8];
  p.suffix_v_stride_h = strides[9];
  p.prefix_indptr = prefix_indptr;
  p.suffix_indptr = suffix_indptr;
  p.group_indptr = group_indptr;
  p.out = out;
  p.lse = lse;
  p.num_groups = sizes[0];
  p.num_seqs = sizes[1];
  p.num_q_heads = sizes[2];
  p.num_kv_heads = sizes[3];
  p.head_dim = sizes[4];
  p.max_splits = sizes[5];
  const int64_t splits = p.max_splits + 1;
  p.partial_o = workspace;
  p.partial_lse = workspace + splits * p.num_seqs * p.num_q_heads * p.head_dim;
  p.softmax_scale = softmax_scale;
  p.dtype = dtype_of(dtype);
  return rpo::shared_prefix_decode(p, nullptr);
}
}

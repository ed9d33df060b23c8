// Torch launcher of rpo_kernels::shared_prefix_decode: checks, workspace, dtype dispatch by rpo::DType.
// Index VALUES (monotone indptrs, group_indptr[-1] == N, ...) are trusted here: the public Python function
// validates them; this layer checks what it can without reading device memory.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

#include "checks.h"
#include "ops.h"

namespace rpo_torch {

namespace {
constexpr const char* kOp = "rpo_kernels::shared_prefix_decode";

// k or v of the prefix or the suffix: [tokens, Hkv, D] with q's dtype, device and head dim.
void check_kv(const char* name, const at::Tensor& t, const at::Tensor& q, int64_t num_kv_heads) {
  check_same_device(kOp, name, t, q);
  check_dim(kOp, name, t, 3);
  check_dtype(kOp, name, t, q.scalar_type());
  TORCH_CHECK(t.size(1) == num_kv_heads && t.size(2) == q.size(2), kOp, ": argument '", name,
              "' must have shape [tokens, ", num_kv_heads, ", ", q.size(2), "], got ", t.sizes());
  TORCH_CHECK(t.size(0) <= std::numeric_limits<int32_t>::max(), kOp, ": argument '", name,
              "' has more than 2^31 - 1 tokens");
  check_rows_aligned(kOp, name, t);
}
}  // namespace

std::tuple<at::Tensor, at::Tensor> shared_prefix_decode(const at::Tensor& q, const at::Tensor& prefix_k,
                                                        const at::Tensor& prefix_v, const at::Tensor& prefix_indptr,
                                                        const at::Tensor& suffix_k, const at::Tensor& suffix_v,
                                                        const at::Tensor& suffix_indptr,
                                                        const at::Tensor& group_indptr, double softmax_scale) {
  check_cuda(kOp, "q", q);
  check_dim(kOp, "q", q, 3);
  const rpo::DType dtype = storage_dtype(kOp, "q", q, /*allow_fp32=*/false);
  const int64_t num_seqs = q.size(0);
  const int64_t num_q_heads = q.size(1);
  const int64_t head_dim = q.size(2);
  TORCH_CHECK(rpo::shared_prefix_decode_supports(static_cast<int>(head_dim), dtype), kOp,
              ": argument 'q' must have head dim 64 or 128, got ", head_dim);
  TORCH_CHECK(num_seqs <= std::numeric_limits<int32_t>::max(), kOp, ": argument 'q' has more than 2^31 - 1 rows");
  check_rows_aligned(kOp, "q", q);
  TORCH_CHECK(prefix_k.dim() == 3, kOp, ": argument 'prefix_k' must have 3 dims, got shape ", prefix_k.sizes());
  const int64_t num_kv_heads = prefix_k.size(1);
  TORCH_CHECK(num_kv_heads > 0 && num_q_heads % num_kv_heads == 0, kOp, ": the query heads of 'q' (", num_q_heads,
              ") must be a multiple of the KV heads of 'prefix_k' (", num_kv_heads, ")");
  check_kv("prefix_k", prefix_k, q, num_kv_heads);
  check_kv("prefix_v", prefix_v, q, num_kv_heads);
  check_kv("suffix_k", suffix_k, q, num_kv_heads);
  check_kv("suffix_v", suffix_v, q, num_kv_heads);
  check_shape(kOp, "prefix_v", prefix_v, prefix_k.sizes());
  check_shape(kOp, "suffix_v", suffix_v, suffix_k.sizes());
  TORCH_CHECK(prefix_indptr.dim() == 1 && prefix_indptr.size(0) >= 1, kOp,
              ": argument 'prefix_indptr' must have shape [B + 1], got ", prefix_indptr.sizes());
  const int64_t num_groups = prefix_indptr.size(0) - 1;
  const at::Tensor prefix_ptr = index_tensor(kOp, "prefix_indptr", prefix_indptr, q, num_groups + 1, at::kInt);
  const at::Tensor group_ptr = index_tensor(kOp, "group_indptr", group_indptr, q, num_groups + 1, at::kInt);
  const at::Tensor suffix_ptr = index_tensor(kOp, "suffix_indptr", suffix_indptr, q, num_seqs + 1, at::kInt);
  TORCH_CHECK(softmax_scale > 0.0, kOp, ": argument 'softmax_scale' must be > 0, got ", softmax_scale);

  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty({num_seqs, num_q_heads, head_dim}, q.options());
  at::Tensor lse = at::empty({num_seqs, num_q_heads}, q.options().dtype(at::kFloat));
  const int max_splits = rpo::shared_prefix_decode_num_splits(static_cast<int>(num_groups),
                                                              static_cast<int>(num_kv_heads), prefix_k.size(0),
                                                              rpo::device_sm_count(q.get_device()));
  at::Tensor workspace = at::empty({rpo::shared_prefix_decode_workspace_floats(
                                       static_cast<int>(num_seqs), static_cast<int>(num_q_heads),
                                       static_cast<int>(head_dim), max_splits)},
                                   lse.options());

  rpo::SharedPrefixDecodeParams p{};
  p.q = q.data_ptr();
  p.q_stride_n = q.stride(0);
  p.q_stride_h = q.stride(1);
  p.prefix_k = prefix_k.data_ptr();
  p.prefix_k_stride_t = prefix_k.stride(0);
  p.prefix_k_stride_h = prefix_k.stride(1);
  p.prefix_v = prefix_v.data_ptr();
  p.prefix_v_stride_t = prefix_v.stride(0);
  p.prefix_v_stride_h = prefix_v.stride(1);
  p.suffix_k = suffix_k.data_ptr();
  p.suffix_k_stride_t = suffix_k.stride(0);
  p.suffix_k_stride_h = suffix_k.stride(1);
  p.suffix_v = suffix_v.data_ptr();
  p.suffix_v_stride_t = suffix_v.stride(0);
  p.suffix_v_stride_h = suffix_v.stride(1);
  p.prefix_indptr = prefix_ptr.data_ptr<int32_t>();
  p.suffix_indptr = suffix_ptr.data_ptr<int32_t>();
  p.group_indptr = group_ptr.data_ptr<int32_t>();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  const int64_t splits = max_splits + 1;
  p.partial_o = workspace.data_ptr<float>();
  p.partial_lse = p.partial_o + splits * num_seqs * num_q_heads * head_dim;
  p.num_groups = static_cast<int>(num_groups);
  p.num_seqs = static_cast<int>(num_seqs);
  p.num_q_heads = static_cast<int>(num_q_heads);
  p.num_kv_heads = static_cast<int>(num_kv_heads);
  p.head_dim = static_cast<int>(head_dim);
  p.max_splits = max_splits;
  p.softmax_scale = static_cast<float>(softmax_scale);
  p.dtype = dtype;
  check_launch(kOp, rpo::shared_prefix_decode(p, c10::cuda::getCurrentCUDAStream().stream()));
  return {out, lse};
}

}  // namespace rpo_torch

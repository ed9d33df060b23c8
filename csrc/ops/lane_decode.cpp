// Torch launcher of rpo_kernels::lane_decode: checks, workspace, dtype dispatch by rpo::DType.
// The table VALUES (lanes in range, lengths within capacity, groups covering every query) are trusted here: the
// Python plan (rpo_kernels.plan_lane_decode) validated them from host integers; this layer checks what it can
// without reading device memory.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

#include "checks.h"
#include "ops.h"

namespace rpo_torch {

namespace {
constexpr const char* kOp = "rpo_kernels::lane_decode";

// k or v lanes of one side: [lanes, Hkv, capacity, D] with q's dtype, device and head dim, aligned rows.
void check_lanes(const char* name, const at::Tensor& t, const at::Tensor& q, int64_t num_kv_heads) {
  check_same_device(kOp, name, t, q);
  check_dim(kOp, name, t, 4);
  check_dtype(kOp, name, t, q.scalar_type());
  TORCH_CHECK(t.size(1) == num_kv_heads && t.size(3) == q.size(2), kOp, ": argument '", name,
              "' must have shape [lanes, ", num_kv_heads, ", capacity, ", q.size(2), "], got ", t.sizes());
  TORCH_CHECK(t.size(2) <= std::numeric_limits<int32_t>::max(), kOp, ": argument '", name,
              "' has a capacity over 2^31 - 1 tokens");
  check_rows_aligned(kOp, name, t);
}

rpo::LaneKv side(const char* k_name, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(k.strides() == v.strides() && k.sizes() == v.sizes(), kOp, ": the V lanes must have the shape and "
              "strides of '", k_name, "' (", k.sizes(), ", ", k.strides(), "), got ", v.sizes(), ", ", v.strides());
  return {k.data_ptr(), v.data_ptr(), k.stride(0), k.stride(1), k.stride(2)};
}
}  // namespace

std::tuple<at::Tensor, at::Tensor> lane_decode(const at::Tensor& q, const at::Tensor& prefix_k,
                                               const at::Tensor& prefix_v, const at::Tensor& suffix_k,
                                               const at::Tensor& suffix_v, const at::Tensor& tables,
                                               int64_t num_groups, int64_t prefix_tokens, double softmax_scale) {
  check_cuda(kOp, "q", q);
  check_dim(kOp, "q", q, 3);
  const rpo::DType dtype = storage_dtype(kOp, "q", q);
  const int64_t num_seqs = q.size(0);
  const int64_t num_q_heads = q.size(1);
  const int64_t head_dim = q.size(2);
  TORCH_CHECK(rpo::lane_decode_supports(static_cast<int>(head_dim), dtype), kOp,
              ": argument 'q' must have head dim 64 or 128, got ", head_dim);
  TORCH_CHECK(num_seqs > 0 && num_seqs <= std::numeric_limits<int32_t>::max(), kOp,
              ": argument 'q' must have between 1 and 2^31 - 1 rows, got ", num_seqs);
  check_rows_aligned(kOp, "q", q);
  TORCH_CHECK(prefix_k.dim() == 4, kOp, ": argument 'prefix_k' must have 4 dims, got shape ", prefix_k.sizes());
  const int64_t num_kv_heads = prefix_k.size(1);
  TORCH_CHECK(num_kv_heads > 0 && num_q_heads % num_kv_heads == 0, kOp, ": the query heads of 'q' (", num_q_heads,
              ") must be a multiple of the KV heads of 'prefix_k' (", num_kv_heads, ")");
  check_lanes("prefix_k", prefix_k, q, num_kv_heads);
  check_lanes("prefix_v", prefix_v, q, num_kv_heads);
  check_lanes("suffix_k", suffix_k, q, num_kv_heads);
  check_lanes("suffix_v", suffix_v, q, num_kv_heads);
  TORCH_CHECK(num_groups > 0 && num_groups <= num_seqs, kOp, ": argument 'num_groups' must be in [1, ", num_seqs,
              "], got ", num_groups);
  check_same_device(kOp, "tables", tables, q);
  check_dtype(kOp, "tables", tables, at::kInt);
  check_contiguous(kOp, "tables", tables);
  const int64_t want = 3 * num_groups + 1 + 3 * num_seqs;
  TORCH_CHECK(tables.dim() == 1 && tables.size(0) == want, kOp, ": argument 'tables' must have shape [", want,
              "] (3 * num_groups + 1 + 3 * N), got ", tables.sizes());
  TORCH_CHECK(softmax_scale > 0.0, kOp, ": argument 'softmax_scale' must be > 0, got ", softmax_scale);

  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty({num_seqs, num_q_heads, head_dim}, q.options());
  at::Tensor lse = at::empty({num_seqs, num_q_heads}, q.options().dtype(at::kFloat));
  const int max_splits = rpo::lane_decode_num_splits(static_cast<int>(num_groups), static_cast<int>(num_kv_heads),
                                                     prefix_tokens, rpo::device_sm_count(q.get_device()));
  at::Tensor workspace = at::empty({rpo::lane_decode_workspace_floats(static_cast<int>(num_seqs),
                                                                      static_cast<int>(num_q_heads),
                                                                      static_cast<int>(head_dim), max_splits)},
                                   lse.options());

  rpo::LaneDecodeParams p{};
  p.q = q.data_ptr();
  p.q_stride_n = q.stride(0);
  p.q_stride_h = q.stride(1);
  p.prefix = side("prefix_k", prefix_k, prefix_v);
  p.suffix = side("suffix_k", suffix_k, suffix_v);
  const int32_t* t = tables.data_ptr<int32_t>();
  p.group_indptr = t;
  p.group_lane = t + num_groups + 1;
  p.group_len = p.group_lane + num_groups;
  p.order = p.group_len + num_groups;
  p.suffix_lane = p.order + num_seqs;
  p.suffix_len = p.suffix_lane + num_seqs;
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.partial_o = workspace.data_ptr<float>();
  p.partial_lse = p.partial_o + int64_t(max_splits + 1) * num_seqs * num_q_heads * head_dim;
  p.num_groups = static_cast<int>(num_groups);
  p.num_seqs = static_cast<int>(num_seqs);
  p.num_q_heads = static_cast<int>(num_q_heads);
  p.num_kv_heads = static_cast<int>(num_kv_heads);
  p.head_dim = static_cast<int>(head_dim);
  p.max_splits = max_splits;
  p.softmax_scale = static_cast<float>(softmax_scale);
  p.dtype = dtype;
  check_launch(kOp, rpo::lane_decode(p, c10::cuda::getCurrentCUDAStream().stream()));
  return {out, lse};
}

}  // namespace rpo_torch

// Torch launcher of rpo_kernels::kv_append: checks and dtype dispatch by rpo::DType. Slot VALUES are trusted
// (the Python wrapper validates them); the kernel skips slot < 0 (padding) and slot >= number of cache rows.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "checks.h"
#include "ops.h"

namespace rpo_torch {

void kv_append(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k_new, const at::Tensor& v_new,
               const at::Tensor& slots) {
  constexpr const char* op = "rpo_kernels::kv_append";
  check_cuda(op, "k_new", k_new);
  check_dim(op, "k_new", k_new, 3);
  const rpo::DType dtype = storage_dtype(op, "k_new", k_new, /*allow_fp32=*/true);
  const int64_t num_tokens = k_new.size(0);
  const int64_t row_elems = k_new.size(1) * k_new.size(2);
  check_same_device(op, "v_new", v_new, k_new);
  check_dtype(op, "v_new", v_new, k_new.scalar_type());
  check_shape(op, "v_new", v_new, k_new.sizes());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"k_new", k_new}, {"v_new", v_new}})
    TORCH_CHECK(t.stride(2) == 1 && t.stride(1) == t.size(2), op, ": argument '", name,
                "' must have each token's [heads, head_dim] block contiguous (strides ", t.strides(), ")");
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"k_cache", k_cache}, {"v_cache", v_cache}}) {
    check_same_device(op, name, t, k_new);
    check_dtype(op, name, t, k_new.scalar_type());
    TORCH_CHECK(t.dim() >= 3 && t.size(-2) == k_new.size(1) && t.size(-1) == k_new.size(2), op, ": argument '",
                name, "' must have shape [..., ", k_new.size(1), ", ", k_new.size(2), "] like 'k_new', got ",
                t.sizes());
    check_contiguous(op, name, t);
  }
  check_shape(op, "v_cache", v_cache, k_cache.sizes());
  const at::Tensor slots64 = index_tensor(op, "slots", slots, k_new, num_tokens, at::kLong);
  const int64_t num_slots = row_elems == 0 ? 0 : k_cache.numel() / row_elems;

  const c10::cuda::CUDAGuard guard(k_new.device());
  check_launch(op, rpo::kv_append(k_new.data_ptr(), k_new.stride(0), v_new.data_ptr(), v_new.stride(0),
                                  slots64.data_ptr<int64_t>(), num_tokens, row_elems, k_cache.data_ptr(),
                                  v_cache.data_ptr(), num_slots, dtype,
                                  c10::cuda::getCurrentCUDAStream().stream()));
}

}  // namespace rpo_torch

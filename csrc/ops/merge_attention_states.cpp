// Torch launcher of rpo_kernels::merge_attention_states: checks, allocation, dtype dispatch by rpo::DType.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "checks.h"
#include "ops.h"

namespace rpo_torch {

std::tuple<at::Tensor, at::Tensor> merge_attention_states(const at::Tensor& out_a, const at::Tensor& lse_a,
                                                          const at::Tensor& out_b, const at::Tensor& lse_b) {
  constexpr const char* op = "rpo_kernels::merge_attention_states";
  check_cuda(op, "out_a", out_a);
  check_dim(op, "out_a", out_a, 3);
  const rpo::DType dtype = storage_dtype(op, "out_a", out_a, /*allow_fp32=*/true);
  check_same_device(op, "out_b", out_b, out_a);
  check_dtype(op, "out_b", out_b, out_a.scalar_type());
  check_shape(op, "out_b", out_b, out_a.sizes());
  const at::IntArrayRef rows_shape = out_a.sizes().slice(0, 2);
  for (const auto& [name, lse] : {std::pair<const char*, const at::Tensor&>{"lse_a", lse_a}, {"lse_b", lse_b}}) {
    check_same_device(op, name, lse, out_a);
    check_dtype(op, name, lse, at::kFloat);
    check_shape(op, name, lse, rows_shape);
    check_contiguous(op, name, lse);
  }
  check_contiguous(op, "out_a", out_a);
  check_contiguous(op, "out_b", out_b);

  const c10::cuda::CUDAGuard guard(out_a.device());
  at::Tensor out = at::empty_like(out_a, at::MemoryFormat::Contiguous);
  at::Tensor lse = at::empty(rows_shape, lse_a.options());
  check_launch(op, rpo::merge_attention_states(out_a.data_ptr(), lse_a.data_ptr<float>(), out_b.data_ptr(),
                                               lse_b.data_ptr<float>(), out.data_ptr(), lse.data_ptr<float>(),
                                               out_a.size(0) * out_a.size(1), static_cast<int>(out_a.size(2)),
                                               dtype, c10::cuda::getCurrentCUDAStream().stream()));
  return {out, lse};
}

}  // namespace rpo_torch

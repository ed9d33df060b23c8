// Argument checks shared by the torch launchers: every message names the op and the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <cuda_runtime_api.h>

#include <string>

#include "api.h"

namespace rpo_torch {

inline void check_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), op, ": argument '", name, "' must be a CUDA tensor, got device ", t.device());
}

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, op, ": argument '", name, "' must have ", dim, " dims, got shape ", t.sizes());
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": argument '", name, "' is on ", t.device(), ", expected ",
              ref.device(), " like the other inputs");
}

inline void check_dtype(const char* op, const char* name, const at::Tensor& t, at::ScalarType want) {
  TORCH_CHECK(t.scalar_type() == want, op, ": argument '", name, "' must have dtype ", want, ", got ",
              t.scalar_type());
}

// Storage dtype of the tensor-core kernels: float16 or bfloat16.
inline rpo::DType storage_dtype(const char* op, const char* name, const at::Tensor& t) {
  if (t.scalar_type() == at::kBFloat16) return rpo::DType::kBFloat16;
  TORCH_CHECK(t.scalar_type() == at::kHalf, op, ": argument '", name, "' must have dtype float16 or bfloat16, got ",
              t.scalar_type());
  return rpo::DType::kFloat16;
}

// Last dim contiguous, other strides and the data pointer multiples of 16 bytes (rows fit 16-byte vectors).
inline void check_rows_aligned(const char* op, const char* name, const at::Tensor& t) {
  const int64_t per16 = 16 / t.element_size();
  bool ok = t.stride(-1) == 1 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) ok = ok && t.stride(d) % per16 == 0;
  TORCH_CHECK(ok, op, ": argument '", name, "' must have a contiguous last dim and 16-byte aligned rows (strides ",
              t.strides(), "); call .contiguous() first");
}

inline void check_contiguous(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_contiguous(), op, ": argument '", name, "' must be contiguous (strides ", t.strides(),
              "); call .contiguous() first");
}

inline void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

}  // namespace rpo_torch

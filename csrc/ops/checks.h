// Argument checks shared by the torch launchers: every message names the op and the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
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

inline void check_shape(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef want) {
  TORCH_CHECK(t.sizes() == want, op, ": argument '", name, "' must have shape ", want, ", got ", t.sizes());
}

// Storage dtype of the kernels; `allow_fp32` is false for the tensor-core kernels.
inline rpo::DType storage_dtype(const char* op, const char* name, const at::Tensor& t, bool allow_fp32) {
  switch (t.scalar_type()) {
    case at::kBFloat16:
      return rpo::DType::kBFloat16;
    case at::kHalf:
      return rpo::DType::kFloat16;
    case at::kFloat:
      if (allow_fp32) return rpo::DType::kFloat32;
      break;
    default:
      break;
  }
  TORCH_CHECK(false, op, ": argument '", name, "' must have dtype ",
              allow_fp32 ? "float32, float16 or bfloat16" : "float16 or bfloat16", ", got ", t.scalar_type());
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

// An index tensor as int32 (indptr) or int64 (slots), 1-D, on `ref`'s device, contiguous.
inline at::Tensor index_tensor(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref,
                               int64_t length, at::ScalarType want) {
  check_same_device(op, name, t, ref);
  TORCH_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, op, ": argument '", name,
              "' must have dtype int32 or int64, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == length, op, ": argument '", name, "' must have shape [", length,
              "], got ", t.sizes());
  return t.to(want).contiguous();
}

inline void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

}  // namespace rpo_torch

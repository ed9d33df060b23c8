// Host-side launch helpers shared by the torch-free translation units.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "api.h"
#include "common.cuh"

namespace rpo {

constexpr int kElementwiseThreads = 256;

// Every launch of the library goes through launch_kernel. The CPU emulation build of tests/helpers/cuda_emu
// (RPO_CUDA_EMULATION) supplies its own launch_kernel, which runs the kernel on host threads.
#if !defined(RPO_CUDA_EMULATION)
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t stream,
                          Args&&... args) {
  if (smem_bytes > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_bytes));
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid, block, smem_bytes, stream>>>(std::forward<Args>(args)...);
  return cudaGetLastError();
}
#endif

// Blocks for a grid-stride loop over `work` items: enough to fill the GPU, capped for 1-D grids.
inline unsigned elementwise_blocks(int64_t work) {
  const int64_t blocks = ceil_div(work, kElementwiseThreads);
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(blocks, 1), int64_t(1) << 20));
}

// Widest vector (<= 16 bytes) of T elements that divides `elems` and every stride and keeps every pointer aligned.
template <typename T>
inline int vector_width(int64_t elems, std::initializer_list<const void*> ptrs,
                        std::initializer_list<int64_t> strides) {
  auto fits = [&](int v) {
    if (elems % v != 0) return false;
    for (const void* p : ptrs)
      if (reinterpret_cast<uintptr_t>(p) % (v * sizeof(T)) != 0) return false;
    for (int64_t s : strides)
      if (s % v != 0) return false;
    return true;
  };
  int vec = static_cast<int>(16 / sizeof(T));
  while (vec > 1 && !fits(vec)) vec /= 2;
  return vec;
}

// Calls f(std::integral_constant<int, V>{}) for the vector width V == vec (1, 2, 4, or 8 for 16-bit types).
template <typename T, typename F>
cudaError_t with_vector_width(int vec, F&& f) {
  if constexpr (sizeof(T) <= 2) {
    if (vec == 8) return f(std::integral_constant<int, 8>{});
  }
  if (vec == 4) return f(std::integral_constant<int, 4>{});
  if (vec == 2) return f(std::integral_constant<int, 2>{});
  return f(std::integral_constant<int, 1>{});
}

// Calls f(T{}) with the storage type named by `dtype`.
template <typename F>
cudaError_t with_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32:
      return f(float{});
    case DType::kFloat16:
      return f(__half{});
    case DType::kBFloat16:
      return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace rpo

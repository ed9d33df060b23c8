// Host-side launch helpers shared by the torch-free translation units.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include "api.h"
#include "common.cuh"

namespace rpo {

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

}  // namespace rpo

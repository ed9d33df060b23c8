// CPU emulation of the CUDA features used by csrc/kernels, for tests on machines without a GPU.
//
// Force-included (g++ -include emu.h -x c++) before the torch-free kernel sources. Every CUDA thread of a block runs
// as a host thread (blocks run one after another); __syncthreads/__syncwarp are barriers, __shfl_xor_sync exchanges
// through a per-warp buffer, shared memory is one static buffer (rpo::smem, defined in harness.cpp), cp.async is a
// synchronous copy (common.cuh), and wmma is the reference model of mma.h next to this file. The arithmetic follows
// the kernels exactly (fp32 math, 16-bit storage); only timing and memory ordering are not emulated.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __shared__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define RPO_CUDA_EMULATION 1

namespace rpo_emu {

constexpr size_t kSharedBytes = 256 * 1024;

struct Warp {
  explicit Warp(int lanes) : bar(lanes) {}
  std::barrier<> bar;
  float slots[32] = {};
};

struct Block {
  explicit Block(int threads) : bar(threads) {}
  std::barrier<> bar;
  std::vector<std::unique_ptr<Warp>> warps;
};

inline thread_local uint3 t_thread;
inline thread_local uint3 t_block;
inline thread_local dim3 t_block_dim;
inline thread_local dim3 t_grid_dim;
inline thread_local Block* t_ctx = nullptr;

inline int lane() { return static_cast<int>(t_thread.x % 32); }
inline Warp& warp() { return *t_ctx->warps[t_thread.x / 32]; }

}  // namespace rpo_emu

#undef threadIdx
#undef blockIdx
#undef blockDim
#undef gridDim
#define threadIdx (::rpo_emu::t_thread)
#define blockIdx (::rpo_emu::t_block)
#define blockDim (::rpo_emu::t_block_dim)
#define gridDim (::rpo_emu::t_grid_dim)

inline void __syncthreads() { rpo_emu::t_ctx->bar.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { rpo_emu::warp().bar.arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float value, int lane_mask) {
  rpo_emu::Warp& w = rpo_emu::warp();
  w.slots[rpo_emu::lane()] = value;
  w.bar.arrive_and_wait();
  const float other = w.slots[rpo_emu::lane() ^ lane_mask];
  w.bar.arrive_and_wait();
  return other;
}

using std::max;
using std::min;

namespace rpo {

// Runs kernel(args...) for every thread of every block of a 1-D/2-D grid of 1-D blocks.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t,
                          Args&&... args) {
  if (smem_bytes > rpo_emu::kSharedBytes || block.y != 1 || block.z != 1 || block.x % 32 != 0)
    return cudaErrorInvalidConfiguration;
  const int threads = static_cast<int>(block.x);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        rpo_emu::Block ctx(threads);
        for (int w = 0; w < threads / 32; ++w) ctx.warps.push_back(std::make_unique<rpo_emu::Warp>(32));
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (int t = 0; t < threads; ++t)
          pool.emplace_back([&, t] {
            rpo_emu::t_thread = {static_cast<unsigned>(t), 0, 0};
            rpo_emu::t_block = {x, y, z};
            rpo_emu::t_block_dim = block;
            rpo_emu::t_grid_dim = grid;
            rpo_emu::t_ctx = &ctx;
            kernel(args...);
          });
        for (std::thread& th : pool) th.join();
      }
  return cudaSuccess;
}

}  // namespace rpo

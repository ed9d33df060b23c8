// Shared device helpers of the rpo kernels: storage types, 16-byte vectors, cp.async, small math.
// Torch-free: raw pointers only. Every kernel here needs sm_80 or newer (cp.async, bf16 tensor cores).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "rpo kernels need sm_80 or newer (cp.async and bf16 tensor cores); set CMAKE_CUDA_ARCHITECTURES accordingly"
#endif

namespace rpo {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Conversion of fp32 (all arithmetic happens in fp32) to a storage type.
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// VEC elements of T moved as one aligned load/store (VEC * sizeof(T) is 4, 8 or 16 bytes, or a single element).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];

  __device__ __forceinline__ void load(const T* p) { *this = *reinterpret_cast<const Vec*>(p); }
  __device__ __forceinline__ void store(T* p) const { *reinterpret_cast<Vec*>(p) = *this; }
};

// Asynchronous 16-byte global->shared copy; when `pred` is false nothing is read and the 16 bytes are zeroed.
// Without __CUDA_ARCH__ (nvcc's host pass, the CPU emulation of tests/helpers/cuda_emu) the copy is synchronous.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool pred) {
#if defined(__CUDA_ARCH__)
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes));
#else
  const uint4 zero = {0, 0, 0, 0};
  *static_cast<uint4*>(smem) = pred ? *static_cast<const uint4*>(gmem) : zero;
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Wait until at most N committed groups of this thread are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Weights of an exact log-sum-exp merge: given the maximum `m` of the partial LSEs (natural log), the weight of a
// partial with LSE `lse` is exp(lse - m); an empty partial (lse = -inf) has weight 0 and is skipped by the callers,
// so that whatever its output holds never reaches the result.
__device__ __forceinline__ bool lse_is_empty(float lse) { return lse == -INFINITY; }

}  // namespace rpo

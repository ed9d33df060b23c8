// Torch-free entry point of merge_attention_states (see api.h).
#include "launch.cuh"
#include "merge_states.cuh"

namespace rpo {

cudaError_t merge_attention_states(const void* out_a, const float* lse_a, const void* out_b, const float* lse_b,
                                   void* out, float* lse, int64_t rows, int head_dim, DType dtype,
                                   cudaStream_t stream) {
  if (rows == 0 || head_dim == 0) return cudaSuccess;
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int vec = vector_width<T>(head_dim, {out_a, out_b, out}, {});
    return with_vector_width<T>(vec, [&](auto width) {
      constexpr int V = decltype(width)::value;
      return launch_kernel(merge_states_kernel<T, V>, elementwise_blocks(rows * (head_dim / V)),
                           kElementwiseThreads, 0, stream, static_cast<const T*>(out_a), lse_a,
                           static_cast<const T*>(out_b), lse_b, static_cast<T*>(out), lse, rows, head_dim);
    });
  });
}

}  // namespace rpo

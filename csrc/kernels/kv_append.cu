// Torch-free entry point of kv_append (see api.h).
#include "kv_append.cuh"
#include "launch.cuh"

namespace rpo {

cudaError_t kv_append(const void* k_new, int64_t k_new_stride, const void* v_new, int64_t v_new_stride,
                      const int64_t* slots, int64_t num_tokens, int64_t row_elems, void* k_cache, void* v_cache,
                      int64_t num_slots, DType dtype, cudaStream_t stream) {
  if (num_tokens == 0 || row_elems == 0) return cudaSuccess;
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int vec = vector_width<T>(row_elems, {k_new, v_new, k_cache, v_cache}, {k_new_stride, v_new_stride});
    return with_vector_width<T>(vec, [&](auto width) {
      constexpr int V = decltype(width)::value;
      return launch_kernel(kv_append_kernel<T, V>, elementwise_blocks(num_tokens * (row_elems / V)),
                           kElementwiseThreads, 0, stream, static_cast<const T*>(k_new), k_new_stride,
                           static_cast<const T*>(v_new), v_new_stride, slots, num_tokens, row_elems,
                           static_cast<T*>(k_cache), static_cast<T*>(v_cache), num_slots);
    });
  });
}

}  // namespace rpo

// Torch-free entry points of the lane decode attention (see api.h).
#include <algorithm>
#include <atomic>

#include "launch.cuh"
#include "lane_decode.cuh"

namespace rpo {

namespace {
constexpr int kMaxSplits = 32;
constexpr int64_t kMinChunkTokens = 256;
constexpr int kMaxDevices = 64;
std::atomic<int> sm_count_cache[kMaxDevices];

// Partials of every prefix chunk and suffix (one kernel), then their exact merge (a second one).
template <typename T, int D>
cudaError_t launch_decode(const LaneDecodeParams& p, cudaStream_t stream) {
  using Cfg = DecodeConfig<T, D>;
  const int64_t rows = int64_t(p.num_seqs) * p.num_q_heads;
  if (rows == 0) return cudaSuccess;
  const dim3 grid(p.num_groups * p.max_splits + p.num_seqs, p.num_kv_heads);
  cudaError_t err =
      launch_kernel(lane_decode_kernel<T, D>, grid, Cfg::kThreads, Cfg::kSmemBytes, stream, p);
  if (err != cudaSuccess) return err;
  constexpr int kRowsPerBlock = 4;
  return launch_kernel(combine_splits_kernel<T, D>, static_cast<unsigned>(ceil_div(rows, kRowsPerBlock)),
                       32 * kRowsPerBlock, 0, stream, static_cast<const float*>(p.partial_o),
                       static_cast<const float*>(p.partial_lse), p.max_splits + 1, rows, static_cast<T*>(p.out),
                       p.lse);
}
}  // namespace

int lane_decode_num_splits(int num_groups, int num_kv_heads, int64_t total_prefix_tokens, int num_sms) {
  if (num_groups <= 0 || num_kv_heads <= 0 || total_prefix_tokens <= 0) return 1;
  const int64_t ctas = int64_t(num_groups) * num_kv_heads;
  const int64_t to_fill = ceil_div(2 * int64_t(std::max(num_sms, 1)), ctas);
  const int64_t by_length = ceil_div(ceil_div(total_prefix_tokens, num_groups), kMinChunkTokens);
  return static_cast<int>(std::clamp<int64_t>(std::min(to_fill, by_length), 1, kMaxSplits));
}

int64_t lane_decode_workspace_floats(int num_seqs, int num_q_heads, int head_dim, int max_splits) {
  return int64_t(max_splits + 1) * num_seqs * num_q_heads * (head_dim + 1);
}

bool lane_decode_supports(int head_dim, DType dtype) {
  return (head_dim == 64 || head_dim == 128) && (dtype == DType::kFloat16 || dtype == DType::kBFloat16);
}

cudaError_t lane_decode(const LaneDecodeParams& params, cudaStream_t stream) {
  if (!lane_decode_supports(params.head_dim, params.dtype) || params.max_splits < 1 ||
      params.num_kv_heads < 1 || params.num_q_heads % params.num_kv_heads != 0)
    return cudaErrorInvalidValue;
  const bool bf16 = params.dtype == DType::kBFloat16;
  if (params.head_dim == 64)
    return bf16 ? launch_decode<__nv_bfloat16, 64>(params, stream) : launch_decode<__half, 64>(params, stream);
  return bf16 ? launch_decode<__nv_bfloat16, 128>(params, stream) : launch_decode<__half, 128>(params, stream);
}

int device_sm_count(int device) {
  if (device >= 0 && device < kMaxDevices) {
    const int cached = sm_count_cache[device].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int count = 0;
  if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  if (device >= 0 && device < kMaxDevices) sm_count_cache[device].store(count, std::memory_order_relaxed);
  return count;
}

}  // namespace rpo

// The torch launchers of rpo_kernels, registered in bindings.cpp as the CUDA kernels of the rpo_kernels:: ops.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace rpo_torch {

// rpo_kernels::lane_decode(q [N,Hq,D], prefix_k/v [lanes,Hkv,cap,D], suffix_k/v [lanes,Hkv,cap,D],
//                          tables [3B+1+3N] int32, num_groups B, prefix_tokens, softmax_scale) -> (out, lse)
std::tuple<at::Tensor, at::Tensor> lane_decode(const at::Tensor& q, const at::Tensor& prefix_k,
                                               const at::Tensor& prefix_v, const at::Tensor& suffix_k,
                                               const at::Tensor& suffix_v, const at::Tensor& tables,
                                               int64_t num_groups, int64_t prefix_tokens, double softmax_scale);

}  // namespace rpo_torch

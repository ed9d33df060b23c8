// The torch launchers of rpo_kernels, registered in bindings.cpp as the CUDA kernels of the rpo_kernels:: ops.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace rpo_torch {

// rpo_kernels::merge_attention_states(out_a [N,H,D], lse_a [N,H] fp32, out_b, lse_b) -> (out, lse)
std::tuple<at::Tensor, at::Tensor> merge_attention_states(const at::Tensor& out_a, const at::Tensor& lse_a,
                                                          const at::Tensor& out_b, const at::Tensor& lse_b);

// rpo_kernels::shared_prefix_decode(q [N,Hq,D], prefix_k/v [TP,Hkv,D], prefix_indptr [B+1], suffix_k/v [TS,Hkv,D],
//                                   suffix_indptr [N+1], group_indptr [B+1], softmax_scale) -> (out, lse)
std::tuple<at::Tensor, at::Tensor> shared_prefix_decode(const at::Tensor& q, const at::Tensor& prefix_k,
                                                        const at::Tensor& prefix_v, const at::Tensor& prefix_indptr,
                                                        const at::Tensor& suffix_k, const at::Tensor& suffix_v,
                                                        const at::Tensor& suffix_indptr,
                                                        const at::Tensor& group_indptr, double softmax_scale);

// rpo_kernels::kv_append(k_cache [..., Hkv, D] (mutated), v_cache (mutated), k_new [T,Hkv,D], v_new, slots [T])
void kv_append(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k_new, const at::Tensor& v_new,
               const at::Tensor& slots);

}  // namespace rpo_torch

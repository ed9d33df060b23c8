"""Triton kernels of rpo_kernels. Import the op modules lazily: importing them imports triton.

Each module in ``KERNEL_MODULES`` exposes ``compile_specs()``: (kernel, signature, constexprs) triples that cover
all of its ``@triton.jit`` kernels, lowered ahead of time for sm_80 and sm_90 by the test suite.
"""

KERNEL_MODULES = ("rpo_kernels.triton.token_logprobs",
                  "rpo_kernels.triton.shared_prefix_attention", "rpo_kernels.triton.shared_prefix_attention_bwd",
                  "rpo_kernels.triton.merge_attention_states")

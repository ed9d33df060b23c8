"""rpo_kernels: fused kernels for RL fine-tuning of reasoning LLMs with RPO.

Every op has a pure-PyTorch reference (``rpo_kernels.reference``), Triton kernels (``rpo_kernels.triton``, loaded
lazily) and, where built, CUDA kernels; ``backend=`` per call or ``RPO_KERNELS_BACKEND`` picks one. Importing this
package needs no GPU, no CUDA toolkit and no compiled extension.
"""

from ._dispatch import backends
from .ops.lane_decode_attention import LanePlan, lane_decode_attention, plan_lane_decode
from .ops.policy_loss import fused_linear_policy_loss, policy_loss
from .ops.shared_prefix_attention import SharedPrefixPlan, plan_shared_prefix, shared_prefix_attention
from .ops.token_logprobs import token_logprobs

__version__ = "0.1.0"

__all__ = ["backends", "fused_linear_policy_loss", "policy_loss", "token_logprobs", "__version__",
           "shared_prefix_attention", "SharedPrefixPlan", "plan_shared_prefix",
           "LanePlan", "lane_decode_attention", "plan_lane_decode"]

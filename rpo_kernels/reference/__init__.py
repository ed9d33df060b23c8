"""Pure-PyTorch definitions of every op: the semantics, the CPU path, the test oracle and the benchmark baseline."""

from .fused_linear_policy_loss import fused_linear_policy_loss_ref
from .policy_loss import LOSS_TYPES, per_token_objective, policy_loss_ref, token_weights
from .token_logprobs import token_logprobs_ref

__all__ = ["LOSS_TYPES", "fused_linear_policy_loss_ref", "per_token_objective", "policy_loss_ref", "token_weights",
           "token_logprobs_ref"]

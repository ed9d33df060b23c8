"""rpo_train: the RPO training loop (experience cache, rollout engines, rewards, GRPO/DAPO objectives, trainer).

The loss math it uses lives in ``rpo_kernels`` (``policy_loss``, ``fused_linear_policy_loss``).
"""

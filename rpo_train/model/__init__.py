"""The policy's forward passes: the one decoder-layer path (``decoder``) that both the native rollout engine and the
prefix-once training forward (``prefix_forward``) run, the trainer's policy forward into rpo_kernels' fused loss
(``policy``: batches, log-probs, the loss), and a run's precision (``precision``: master weights, the engine's copy,
the autocast). Import the modules themselves; this package re-exports nothing, so importing it loads no torch."""

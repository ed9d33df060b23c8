"""Public entry points of rpo_kernels: argument checks and backend dispatch; the math lives in reference/."""

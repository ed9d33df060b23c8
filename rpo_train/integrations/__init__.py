"""RPO inside other trainers. ``rpo_train.integrations.trl``: ``RPOConfig``/``RPOTrainer`` for Hugging Face TRL's
``GRPOTrainer`` (needs the ``trl`` extra); ``rpo_train.integrations.prefix_plan``: the trainer-independent part (which
prefix each row samples from, the cache update after scoring), which any loop that owns its own generation can use."""

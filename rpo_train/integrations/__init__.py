"""RPO inside other trainers. ``rpo_train.integrations.trl``: ``RPOConfig``/``RPOTrainer`` for Hugging Face TRL's
``GRPOTrainer`` (needs the ``trl`` extra); ``rpo_train.integrations.trl_rows``: RPO's step over a trainer's rows
(plans, cache update, run state; no TRL inside), on the rules of ``rpo_train.plan`` that rpo-train uses too."""

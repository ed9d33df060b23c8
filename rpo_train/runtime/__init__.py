"""The plumbing of a run, apart from its math: user errors and how the tools report them (``errors``), crash-safe
writes (``atomic``), seed derivation (``seeding``), the checks of a run's inputs (``preflight``), torchrun data
parallelism and FSDP (``distributed``, ``sharding``), metrics (``metrics``), the ``out_dir`` lock (``run_lock``), clean
stops on Ctrl-C / SIGTERM (``interrupt``) and checkpoints (``checkpointing``). It imports nothing of the method
above it (``tests/tools/test_lint.py``). Import the modules themselves; this package re-exports nothing, so importing
it loads no torch."""

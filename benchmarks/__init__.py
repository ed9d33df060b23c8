"""Benchmarks of rpo: one harness (harness.py), one bench_<thing>.py per op or workload, results in results/."""

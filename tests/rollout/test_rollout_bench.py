"""Smoke test of benchmarks/bench_rollout.py at its quick shape (rows written to a temporary CSV)."""

from __future__ import annotations

import torch

from benchmarks.bench_rollout import main
from benchmarks.rows import read_rows


def test_bench_rollout_quick(tmp_path):
    out = tmp_path / "rollout.csv"
    threads = torch.get_num_threads()
    try:
        main(["--quick", "--rep", "1", "--threads", "1", "--providers", "native", "hf", "--out", str(out),
              "--no-plot"])
    finally:
        torch.set_num_threads(threads)
    rows = read_rows(out)
    value = {(r["provider"], r["metric"]): float(r["value"]) for r in rows}
    assert value[("native-full", "tokens_per_sample")] == 48.0
    assert 0 < value[("native-rpo/full", "tokens_per_sample_ratio")] < 0.2
    assert ("native/hf-full", "tokens_per_s_ratio") in value

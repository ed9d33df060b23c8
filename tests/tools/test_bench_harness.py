"""The benchmark harness measures, writes rows atomically and plots them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.harness import copy_bandwidth_gbps, finish, measure, rows_for, run_jobs
from benchmarks.rows import COLUMNS, append_rows, read_rows

PEAK = """
import json, torch
from benchmarks.harness import peak_memory_mb
big = peak_memory_mb(lambda: torch.ones(64, 2**20).sum(), "cpu")  # 256 MiB temporary
small = peak_memory_mb(lambda: torch.ones(16).sum(), "cpu")
print(json.dumps([big, small]))
"""


def test_peak_memory_sees_a_large_temporary():
    """In a fresh process, as the benchmarks measure (one process per provider and shape): memory that earlier tests
    freed but the allocator kept resident would hide the temporary's peak."""
    res = subprocess.run([sys.executable, "-c", PEAK], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 0, res.stderr[-2000:]
    big, small = json.loads(res.stdout.strip().splitlines()[-1])
    assert big > 200 and small < 50


def test_rows_roundtrip_and_append(tmp_path):
    m = measure(lambda: torch.ones(1000).sum(), "cpu", warmup=1, rep=3)
    assert 0 < m.p20_ms <= m.median_ms <= m.p80_ms
    path = tmp_path / "res.csv"
    append_rows(path, rows_for("op", "prov", "N=1", m, "cpu"))
    append_rows(path, rows_for("op", "prov2", "N=1", m, "cpu"))
    rows = read_rows(path)
    assert len(rows) == 8 and set(rows[0]) == set(COLUMNS)
    assert {r["provider"] for r in rows} == {"prov", "prov2"}
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="lacks columns"):
        append_rows(path, [{"op": "x"}])
    assert len(read_rows(path)) == 8


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install -e '.[dev]')")
    from benchmarks.plot import plot

    m = measure(lambda: torch.ones(10).sum(), "cpu", warmup=0, rep=2)
    path = append_rows(tmp_path / "r.csv", rows_for("op", "a", "s", m, "cpu") + rows_for("op", "b", "s", m, "cpu"))
    png = plot(path)
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


def test_a_failing_job_is_reported_and_the_others_rows_are_kept(tmp_path):
    m = measure(lambda: torch.ones(10).sum(), "cpu", warmup=0, rep=2)

    def job(args):
        if args == ["broken"]:
            raise RuntimeError("provider exploded")
        return rows_for("op", args[0], "s", m, "cpu")

    rows, failed = run_jobs("unused", [], [["a"], ["broken"], ["b"]], "cpu", job, isolate=False)
    assert {r["provider"] for r in rows} == {"a", "b"}
    assert len(failed) == 1 and "broken" in failed[0] and "provider exploded" in failed[0]
    with pytest.raises(SystemExit, match="1 benchmark job"):
        finish(rows, failed, tmp_path / "r.csv", plot=False)
    assert len(read_rows(tmp_path / "r.csv")) == 8  # measured rows are recorded before the failure is raised


def test_copy_bandwidth_is_measured():
    assert copy_bandwidth_gbps("cpu", mib=16, rep=3) > 0.1


def test_merge_appends_new_rows_once(tmp_path):
    from benchmarks.merge import merge

    m = measure(lambda: torch.ones(10).sum(), "cpu", warmup=0, rep=2)
    src, into = tmp_path / "gpu", tmp_path / "results"
    append_rows(src / "attention.csv", rows_for("op", "triton", "s", m, "cpu"))
    append_rows(into / "attention.csv", rows_for("op", "reference", "s", m, "cpu"))
    assert merge(src, into, plot=False) == {"attention.csv": 4}
    assert merge(src, into, plot=False) == {"attention.csv": 0}
    assert {r["provider"] for r in read_rows(into / "attention.csv")} == {"reference", "triton"}

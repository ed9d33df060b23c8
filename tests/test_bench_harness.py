"""The benchmark harness measures, writes rows atomically and plots them."""

from __future__ import annotations

import pytest
import torch

from benchmarks.harness import COLUMNS, append_rows, measure, peak_memory_mb, read_rows, rows_for


def test_peak_memory_sees_a_large_temporary():
    big = peak_memory_mb(lambda: torch.ones(64, 2**20).sum(), "cpu")  # 256 MiB temporary
    small = peak_memory_mb(lambda: torch.ones(16).sum(), "cpu")
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

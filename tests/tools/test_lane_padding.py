"""The lanes-vs-pages simulation (``benchmarks/lane_padding.py``): what it reports holds by construction, the
committed results are what the script writes, and bad arguments are one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import lane_padding

ROOT = Path(__file__).resolve().parents[2]


def test_pages_waste_less_than_lanes_and_the_committed_results_reproduce(tmp_path, capsys):
    out = tmp_path / "lane_padding.json"
    assert lane_padding.main(["--out", str(out)]) == 0
    got = json.loads(out.read_text())
    for recipe in got["recipes"].values():
        assert 0 <= recipe["paged_waste"] < recipe["lane_waste"] < 1
        assert recipe["used"] <= recipe["paged"] <= recipe["lanes"]
        assert recipe["groups_fit_lanes"] <= recipe["groups_fit_paged"] <= 32
    committed = json.loads((ROOT / "benchmarks" / "results" / "lane_padding.json").read_text())
    assert got["recipes"] == committed["recipes"]


@pytest.mark.parametrize("argv,text", [(["--calls", "0"], "--calls must be >= 1"),
                                       (["--budget-gib", "0"], "--budget-gib must be > 0")])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys, argv, text):
    with pytest.raises(SystemExit) as exc:
        lane_padding.main([*argv, "--out", str(tmp_path / "x.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and text in err[0]

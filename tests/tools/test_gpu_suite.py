"""scripts/gpu_suite.sh cannot rot between GPU visits: its dry run walks every phase here (CMake configure, test
collection, the benchmarks at their quick shapes on the CPU, the pytest benchmarks at their smoke shapes) and must
pass; its arguments are checked."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "scripts" / "gpu_suite.sh"


def suite(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SUITE), "--python", sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def steps(out: Path) -> dict[tuple[str, str], str]:
    with (out / "steps.tsv").open() as f:
        return {(phase, name): status for phase, name, status, _ in csv.reader(f, delimiter="\t")}


def test_help_names_every_phase():
    res = suite("--help")
    assert res.returncode == 0
    for phase in ("env", "deps", "build", "test", "bench", "--dry-run", "--out", "--budget"):
        assert phase in res.stdout


@pytest.mark.parametrize("args,message", [(["--phases", "env,tests"], "unknown phase 'tests'"),
                                          (["--budget", "ten"], "--budget: expected whole seconds"),
                                          (["--frobnicate"], "unknown argument '--frobnicate'")])
def test_bad_arguments_get_one_line_and_exit_2(tmp_path, args, message):
    res = suite("--out", str(tmp_path), *args)
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_an_exhausted_budget_skips_steps_and_fails(tmp_path):
    res = suite("--dry-run", "--phases", "env", "--budget", "1", "--out", str(tmp_path))
    assert res.returncode == 1
    assert steps(tmp_path) == {("env", "versions"): "skipped"}
    assert "SKIPPED, the --budget of 1s is spent" in (tmp_path / "suite.log").read_text()


def test_dry_run_walks_every_phase(tmp_path):
    phases = ["env", "deps", "build", "test", "bench"]
    missing = [tool for tool in ("cmake", "ninja", "nvcc") if shutil.which(tool) is None]
    if missing:
        print(f"no {', '.join(missing)} here: the dry run leaves out the build phase")
        phases.remove("build")
    res = suite("--dry-run", "--phases", ",".join(phases), "--out", str(tmp_path))
    log = (tmp_path / "suite.log").read_text()
    assert res.returncode == 0, log[-6000:]
    done = steps(tmp_path)
    assert all(status == "0" for status in done.values()), done
    expected = {("env", "versions"), ("test", "collect"), ("bench", "policy_loss"), ("bench", "attention"),
                ("bench", "policy_forward"), ("bench", "rollout"), ("bench", "pytest_benchmarks")}
    if "build" in phases:
        expected.add(("build", "configure"))
    assert expected <= set(done), done
    assert json.loads((tmp_path / "env.json").read_text())["torch"]
    for name in ("policy_loss", "attention", "policy_forward", "rollout"):
        assert (tmp_path / "results" / f"{name}.csv").stat().st_size > 0, name
    saved = list((tmp_path / "benchmarks").glob("*/*.json"))  # pytest-benchmark's autosave, one run
    assert len(saved) == 1 and json.loads(saved[0].read_text())["benchmarks"], saved
    for phase in phases:
        assert f"== {phase}: ok in " in log

"""The training comparison report: seeds aggregate to mean and spread, RPO/full ratios come from the same setting."""

from __future__ import annotations

import json

import pytest

from benchmarks.rows import append_rows
from benchmarks.training_report import aggregate, grid_table, load_runs, main


def write_run(results, arm, seed, la, values, extra=""):
    shape = f"tiny-cpu steps=4 length_aware={int(la)} seed={seed} {extra}".strip()
    stamp = {"device": "cpu", "version": "test", "date": "2026-01-01T00:00:00Z"}
    append_rows(results / "runs.csv", [{"op": "training", "provider": arm, "shape": shape, "metric": k,
                                            "value": str(v), **stamp} for k, v in values.items()])
    runs = results / "runs"
    runs.mkdir(exist_ok=True)
    meta = {"run": f"{arm}{seed}", "arm": arm, "seed": seed, "length_aware": la, "extra": {}, "steps": 4}
    curve = [{"step": s, "eval/accuracy": 0.1 * s, "reward/mean": 0.2} for s in range(5)]
    (runs / f"{arm.replace('+', '_')}{seed}{extra.replace('=', '-')}.jsonl").write_text(
        "\n".join(json.dumps(x) for x in [meta, *curve]) + "\n")


def values(acc, tokens, rollout, train=1.0):
    return {"accuracy_before": 0.1, "accuracy_after": acc, "tokens_per_sample": tokens, "tokens_generated": 10 * tokens,
            "rollout_s": rollout, "train_s": train, "cache_init_s": 0.5, "total_s": rollout + train + 0.5,
            "step_s": (rollout + train) / 4}


def test_report_aggregates_seeds_and_ratios(tmp_path, capsys):
    write_run(tmp_path, "grpo", 0, True, values(0.8, 100.0, 10.0))
    write_run(tmp_path, "grpo", 1, True, values(0.9, 100.0, 10.0))
    write_run(tmp_path, "grpo+rpo", 0, True, values(0.7, 5.0, 1.0))
    write_run(tmp_path, "grpo+rpo", 1, True, values(0.9, 7.0, 1.0))
    write_run(tmp_path, "grpo+rpo", 0, True, values(0.5, 2.0, 0.5), extra="truncation.max_cut=8")
    agg = aggregate(load_runs(tmp_path / "runs.csv"))
    mean, sd, n = agg[("grpo+rpo", True, ())]["accuracy_after"]
    assert n == 2 and mean == pytest.approx(0.8) and sd == pytest.approx(0.1414, abs=1e-3)
    assert ("grpo+rpo", True, (("truncation.max_cut", "8"),)) in agg
    row = next(line for line in grid_table(agg).splitlines() if line.startswith("| grpo+rpo | on"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[10] == "0.060" and cells[11] == "0.060" and cells[12] == "0.100"  # tokens, generated, rollout
    assert cells[15] == "-5.0 pt"
    main(["--recipe", "tiny-cpu", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "max_cut=8" in out and (tmp_path / "health.png").is_file() and (tmp_path / "truncation.png").is_file()
    assert json.loads((tmp_path / "summary.json").read_text())


def test_variants_table_compares_overrides_with_the_plain_arm_and_its_baseline(tmp_path):
    from benchmarks.training_report import sweep_table, variants_table

    write_run(tmp_path, "dapo", 0, True, values(0.99, 200.0, 10.0))
    write_run(tmp_path, "dapo+rpo", 0, True, values(0.80, 14.0, 1.0))
    write_run(tmp_path, "dapo+rpo", 0, True, values(0.97, 14.0, 1.0), extra="objective.beta=0.04")
    agg = aggregate(load_runs(tmp_path / "runs.csv"))
    row = next(line for line in variants_table(agg).splitlines() if "objective.beta=0.04" in line)
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[:3] == ["dapo+rpo", "on", "objective.beta=0.04"]
    assert cells[5:] == ["80.0", "99.0", "-2.0 pt"]
    assert "beta" not in sweep_table(agg, 30)  # not a truncation setting


def test_bench_training_set_overrides_join_every_run():
    from benchmarks.bench_training import parse_sets, run_name
    from rpo_train.runtime.errors import UsageError

    sets = parse_sets(["objective.beta=0.04", "data.task=hf"])
    assert sets == {"objective.beta": "0.04", "data.task": "hf"}
    assert run_name("dapo+rpo", 1, True, sets) == "dapo_rpo_la1_seed1_task-hf_beta-0.04"
    for bad in ("objective.beta", "=1", "objective.beta="):
        with pytest.raises(UsageError, match="--set"):
            parse_sets([bad])

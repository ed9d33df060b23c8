"""Keep benchmark rows measured elsewhere (the GPU suite's ``--out DIR/results``) with the project's results.

    python -m benchmarks.merge DIR/results [--into benchmarks/results]

Every ``*.csv`` of the source folder is appended to the CSV of the same name in the results folder (rows already
there are skipped, so merging twice changes nothing) and its plot is redrawn.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rpo_train.runtime.errors import ArgumentParser, report_usage_errors

from .harness import RESULTS_DIR, record
from .rows import COLUMNS, read_rows


def merge(source: Path, into: Path, *, plot: bool = True) -> dict[str, int]:
    """{csv name: rows added} for every CSV of ``source``."""
    added = {}
    for csv_path in sorted(Path(source).glob("*.csv")):
        have = {tuple(r[c] for c in COLUMNS) for r in read_rows(into / csv_path.name)}
        new = [r for r in read_rows(csv_path) if tuple(r.get(c, "") for c in COLUMNS) not in have]
        if new:
            record(new, into / csv_path.name, plot=plot)
        added[csv_path.name] = len(new)
    return added


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a folder of benchmark CSVs (e.g. runs/gpu-suite/results)")
    parser.add_argument("--into", type=Path, default=RESULTS_DIR, help="the results folder (default: %(default)s)")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        parser.error(f"source {args.source} is not a folder")
    for name, count in merge(args.source, args.into, plot=not args.no_plot).items():
        print(f"{name}: {count} new rows")


if __name__ == "__main__":
    sys.exit(report_usage_errors("benchmarks.merge", lambda: main() or 0))

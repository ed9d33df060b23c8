"""Benchmark rows kept as CSV data: the columns, reading, and crash-safe appending (``rpo_train.runtime.atomic``).

Rows have the columns ``op, provider, shape, metric, value, device, version, date``; ``device`` names the card (or
the CPU model and core count) that measured them.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from rpo_train.runtime.atomic import atomic_write

COLUMNS = ("op", "provider", "shape", "metric", "value", "device", "version", "date")


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of the CSV at ``path`` ([] when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def append_rows(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Append ``rows`` to the CSV at ``path`` atomically (the old rows and the new ones written to a temporary file
    that replaces it); a row lacking a column is an error and nothing is written."""
    for row in rows:
        missing = set(COLUMNS) - set(row)
        if missing:
            raise ValueError(f"benchmark row lacks columns {sorted(missing)}: {row}")
    existing = read_rows(path)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(existing + rows)

    return atomic_write(path, write)

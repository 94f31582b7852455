"""Metrics rows appended to `workdir/metrics.jsonl` and `workdir/metrics.csv`, flushed per row."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from jaxnas.io_utils import json_safe

CSV_FIELDS = ("step", "epoch", "split", "loss", "accuracy", "lr", "images_per_sec", "elapsed_s")
JSONL_NAME, CSV_NAME = "metrics.jsonl", "metrics.csv"


def _json_line(row: dict[str, Any]) -> str:
    """Strict JSON (a diverged loss, NaN, is written as null: JSON has no NaN and strict readers refuse it)."""
    return json.dumps(json_safe(row), allow_nan=False)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isfinite(value):
        return round(value, 7)
    return value


class MetricsWriter:
    """Appends rows; every row goes to the JSONL file, the `CSV_FIELDS` columns to the CSV file.

    `resume_step`: rows logged after this step by an interrupted run are dropped first,
    so a resumed run's files read as one uninterrupted run (0 = a fresh run).
    """

    def __init__(self, workdir: str | Path, resume_step: int = 0):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.workdir / JSONL_NAME
        self.csv_path = self.workdir / CSV_NAME
        self._rows = [r for r in read_metrics(self.workdir) if int(r.get("step", 0)) <= resume_step]
        # Line-buffered: every row is on disk as soon as it is written (a crash loses no logged row).
        self._jsonl = open(self.jsonl_path, "w", encoding="utf-8", buffering=1)
        self._csv_file = open(self.csv_path, "w", encoding="utf-8", newline="", buffering=1)
        self._csv = csv.DictWriter(self._csv_file, fieldnames=CSV_FIELDS, extrasaction="ignore")
        self._csv.writeheader()
        for row in self._rows:  # the kept rows of earlier sessions, rewritten
            self._append(row)

    def _append(self, row: dict[str, Any]) -> None:
        self._jsonl.write(_json_line(row) + "\n")
        self._csv.writerow(row)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every row of the run so far, including those of earlier (resumed) sessions."""
        return list(self._rows)

    def write(self, row: dict[str, Any]) -> dict[str, Any]:
        row = {k: _plain(v) for k, v in row.items()}
        self._rows.append(row)
        self._append(row)
        return row

    def close(self) -> None:
        self._jsonl.close()
        self._csv_file.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    """The rows of `workdir/metrics.jsonl` (a torn last line from a crash is skipped)."""
    path = Path(workdir) / JSONL_NAME
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows

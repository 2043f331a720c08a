"""``sweep_summary.csv``: one row per finished trial, durable as soon as written."""

from __future__ import annotations

import csv
import io
import os
import threading
from pathlib import Path
from typing import Any, Callable

from engine.fsutil import atomic_write_text

#: Leading columns of every row.
FIXED_COLUMNS = ("trial", "run_id", "config_hash", "run_dir", "status", "error")
#: Final metrics copied from a trial's ``metrics.json``; other keys are ignored.
METRIC_COLUMNS = (
    "val_accuracy",
    "best_val_accuracy",
    "val_loss",
    "train_loss",
    "epochs",
    "steps",
    "germinations",
    "wall_seconds",
)


class SummaryCsv:
    """Append-only CSV: ``trial, run_id, config_hash, run_dir, status, error, <params>, <metrics>``.

    ``run_id`` is unique per trial launch; ``config_hash`` groups rows of one
    config (e.g. across sweeps).

    The header is written once (when the file is new or empty). Each row is
    flushed and fsynced before :meth:`append` returns, so a crash during trial
    k leaves rows 1..k-1 intact.
    """

    def __init__(self, path: Path, param_keys: list[str]) -> None:
        self.path = Path(path)
        self.columns = list(FIXED_COLUMNS)
        # A param named like a fixed or metric column would collide; keep the first.
        self.columns += [k for k in param_keys if k not in self.columns and k not in METRIC_COLUMNS]
        self.columns += list(METRIC_COLUMNS)
        # A resumed sweep appends under the header already written, whatever it is.
        self.columns = _header(self.path) or self.columns
        self._lock = threading.Lock()

    def append(self, row: dict[str, Any]) -> None:
        """Write one row (missing columns empty, unknown keys ignored) and fsync it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path, "a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore", restval="")
            if fh.tell() == 0:
                writer.writeheader()
            writer.writerow({k: _cell(v) for k, v in row.items()})
            fh.flush()
            os.fsync(fh.fileno())


def _cell(value: Any) -> Any:
    # Keep rows one line each: collapse newlines in error messages.
    if isinstance(value, str):
        return " ".join(value.split())
    return "" if value is None else value


def _header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return next(csv.reader(fh), [])
    except OSError:
        return []


def read_rows(path: Path) -> list[dict[str, str]]:
    """Every row of a summary CSV (none if it does not exist)."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


def keep_rows(path: Path, keep: Callable[[dict[str, str]], bool]) -> list[dict[str, str]]:
    """Rewrite ``path`` atomically with only the rows ``keep`` accepts; return them.

    A resume drops the rows of trials it runs again, so the summary ends with
    one row per trial.
    """
    rows = read_rows(path)
    kept = [r for r in rows if keep(r)]
    if len(kept) < len(rows):
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=_header(path), extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(path, buf.getvalue())
    return kept

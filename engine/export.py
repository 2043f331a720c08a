"""Flat result files for tools that read plain metrics and tables (DVC metrics and plots).

A run's ``metrics.json`` nests its numbers under ``metrics`` next to strings
(status, run_id, error), and its curves are JSON lines, a format DVC plots do
not read. These helpers turn a run directory into

* a flat JSON object of the final numbers (:func:`run_metrics`), and
* a CSV table of its per-epoch history (:func:`history_rows`, one row per
  epoch: ``epoch``, ``step``, ``phase`` and every scalar the epoch reported),

and a sweep into its ``sweep_summary.csv`` rows (:func:`sweep_rows`) and a
flat JSON summary of them (:func:`sweep_metrics`). Nothing here trains or
changes a run; bad input raises :class:`~engine.errors.ConfigError`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.fsutil import atomic_write_text, csv_text

log = logging.getLogger(__name__)

#: Leading columns of the history table, when present.
HISTORY_LEADING = ("epoch", "step", "phase")
SUMMARY_NAME = "sweep_summary.csv"
#: Lower is better for these sweep columns (the best trial minimises the first one present).
SWEEP_OBJECTIVES = ("val_loss", "train_loss")
#: Trial statuses that are not failures (the sweep runner's rule).
ENDED_NORMALLY = ("finished", "diverged", "interrupted")


def _number(value: Any) -> float | int | None:
    """``value`` as a finite JSON number, else None (bools, strings, NaN, dicts are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _read_json(path: Path, key: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(key, str(path.parent), f"a run directory holding {path.name}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(key, str(path), f"a readable JSON file ({exc})") from None


def run_metrics(run_dir: Path) -> dict[str, float | int]:
    """The final numbers of the run in ``run_dir``: its ``metrics.json`` metrics, flat, numbers only.

    Non-finite values (written as strings) are left out. ``finished`` is 1 when
    the run's status is ``finished``, else 0, so a metrics table shows a run
    that did not end well.
    """
    doc = _read_json(Path(run_dir) / "metrics.json", "run_dir")
    metrics = doc.get("metrics") if isinstance(doc, dict) else None
    if not isinstance(metrics, dict):
        raise ConfigError("run_dir", str(run_dir), "a run directory whose metrics.json has a 'metrics' object")
    out: dict[str, float | int] = {"finished": int(doc.get("status") == "finished")}
    for key in sorted(metrics):
        num = _number(metrics[key])
        if num is not None:
            out[key] = num
    return out


def history_rows(run_dir: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of ``run_dir/history.jsonl``: one row per epoch, scalars only.

    Nested values (e.g. the seeds family's per-seed states) are left out; a
    column appears in the order it was first seen, after :data:`HISTORY_LEADING`.
    A re-run epoch (resume, rollback) keeps its last row.
    """
    path = Path(run_dir) / "history.jsonl"
    if not path.is_file():
        raise ConfigError("run_dir", str(run_dir), "a run directory holding history.jsonl")
    by_epoch: dict[Any, dict[str, Any]] = {}
    columns: dict[str, None] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a run killed mid-line leaves a partial last line
            log.warning("%s:%d: skipping a line that is not JSON", path, n)
            continue
        flat = {k: v for k, v in row.items() if isinstance(v, (str, int, float)) or v is None}
        columns.update(dict.fromkeys(flat))
        by_epoch[row.get("epoch", n)] = flat
    ordered = [c for c in HISTORY_LEADING if c in columns] + [c for c in columns if c not in HISTORY_LEADING]
    return ordered, list(by_epoch.values())


def find_sweep_summary(path: Path) -> Path:
    """The ``sweep_summary.csv`` of ``path``: a sweep directory, or an output dir whose ``sweeps/`` holds one.

    With several sweeps under ``OUTPUT_DIR/sweeps`` the newest (names start
    with their start time) is taken, with a warning.
    """
    path = Path(path)
    if (path / SUMMARY_NAME).is_file():
        return path / SUMMARY_NAME
    found = sorted((path / "sweeps").glob(f"*/{SUMMARY_NAME}"))
    if not found:
        raise ConfigError("sweep", str(path), f"a sweep directory holding {SUMMARY_NAME}, or an output "
                                              f"directory whose sweeps/ holds one")
    if len(found) > 1:
        log.warning("%d sweeps under %s: exporting the newest, %s", len(found), path / "sweeps", found[-1].parent)
    return found[-1]


def sweep_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Columns and rows of the sweep summary found by :func:`find_sweep_summary`."""
    summary = find_sweep_summary(path)
    with open(summary, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def sweep_metrics(rows: list[dict[str, str]]) -> dict[str, float | int]:
    """Flat numbers of a sweep: trials, finished, failed and the best trial by the first objective present.

    As in the sweep's exit code, a trial that diverged or was interrupted
    ended normally; any other status that is not ``finished`` failed.
    """
    statuses = [r.get("status", "") for r in rows]
    out: dict[str, float | int] = {"trials": len(rows), "finished": statuses.count("finished"),
                                   "failed": sum(s not in ENDED_NORMALLY for s in statuses)}
    for objective in SWEEP_OBJECTIVES:
        scored = [(float(r[objective]), int(r["trial"])) for r in rows
                  if r.get(objective) not in (None, "") and r.get("trial", "").isdigit()
                  and math.isfinite(float(r[objective]))]
        if scored:
            best, trial = min(scored)
            out[f"best_{objective}"] = best
            out["best_trial"] = trial
            break
    return out


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """``doc`` as indented JSON at ``path`` (atomically; parent directories created)."""
    atomic_write_text(Path(path), json.dumps(doc, indent=2, sort_keys=True) + "\n")


def write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """``rows`` as CSV at ``path`` (atomically; parent directories created)."""
    atomic_write_text(Path(path), csv_text(rows, columns))

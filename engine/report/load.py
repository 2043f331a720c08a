"""Read a run's or a sweep's result files for a report (never writes, never raises on bad rows).

A report is also written for runs that failed or were killed, so every reader
here tolerates missing files, empty files and a truncated last JSONL line:
what can be read is shown, the rest is left out (and logged at debug level).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.sweep.summary import FIXED_COLUMNS, METRIC_COLUMNS

log = logging.getLogger("engine.report")

#: Summary columns that are never parameters, even where a config has a key of that name.
_NOT_PARAMS = frozenset(FIXED_COLUMNS) | frozenset(METRIC_COLUMNS)

#: JSONL files larger than this are read only up to it (the report stays quick on huge runs).
MAX_JSONL_BYTES = 32 * 1024 * 1024
#: Bytes of the end of ``run.log`` scanned for warnings and errors.
LOG_TAIL_BYTES = 1024 * 1024


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file's content; ``{}`` when missing or unreadable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.debug("cannot read %s: %s", path, exc)
        return {}
    return doc if isinstance(doc, dict) else {}


def read_jsonl(path: Path, limit: int = MAX_JSONL_BYTES) -> list[dict[str, Any]]:
    """Every readable JSON-object line of ``path`` (bad or partial lines skipped)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit)
    except OSError:
        return []
    rows: list[dict[str, Any]] = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping file's content; ``{}`` when missing or unreadable."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)  # noqa: S506 - a safe loader
    except (OSError, yaml.YAMLError) as exc:
        log.debug("cannot read %s: %s", path, exc)
        return {}
    return doc if isinstance(doc, dict) else {}


def number(value: Any) -> float | None:
    """``value`` as a finite float (JSON strings "nan"/"inf" and non-numbers give None)."""
    if isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def flat_leaves(doc: dict[str, Any]) -> dict[str, Any]:
    """Leaf key -> value of a nested config mapping (the engine's flat keys are unique)."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update(flat_leaves(value))
        else:
            out[key] = value
    return out


def log_problems(path: Path, limit: int = LOG_TAIL_BYTES) -> list[str]:
    """WARNING/ERROR/CRITICAL lines of the end of a log file (tracebacks' first line only)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - limit))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    marks = (" WARNING ", " ERROR ", " CRITICAL ")
    return [line for line in text.splitlines() if any(m in line for m in marks)]


@dataclass
class FileEntry:
    """A file of the run directory, relative to it."""

    path: str
    size: int


@dataclass
class RunData:
    """Everything a run report shows, as read from the run directory."""

    run_dir: Path
    config: dict[str, Any]
    identity: dict[str, Any]
    manifest: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    events: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    texts: list[dict[str, Any]]
    log_problems: list[str]
    images: list[str] = field(default_factory=list)
    files: list[FileEntry] = field(default_factory=list)

    @property
    def status(self) -> str:
        """The status in ``metrics.json`` (``unknown`` when it is missing)."""
        return str(self.metrics.get("status") or "unknown")


def list_files(root: Path, skip: tuple[str, ...] = ("report.html", "plotly.min.js")) -> list[FileEntry]:
    """Every file under ``root`` (sorted, relative paths), the report's own files left out."""
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel in skip or not path.is_file():
            continue
        try:
            out.append(FileEntry(rel, path.stat().st_size))
        except OSError:
            continue
    return out


def load_run(run_dir: Path) -> RunData:
    """Read ``run_dir``'s result files (any of them may be missing)."""
    files = list_files(run_dir)
    images = [f.path for f in files if f.path.lower().endswith(".png")]
    return RunData(
        run_dir=run_dir,
        config=read_yaml(run_dir / "config.yaml"),
        identity=read_json(run_dir / "identity.json"),
        manifest=read_json(run_dir / "manifest.json"),
        metrics=read_json(run_dir / "metrics.json"),
        history=read_jsonl(run_dir / "history.jsonl"),
        events=read_jsonl(run_dir / "events.jsonl"),
        decisions=read_jsonl(run_dir / "decisions.jsonl"),
        samples=read_jsonl(run_dir / "samples.jsonl"),
        texts=read_jsonl(run_dir / "text_samples.jsonl"),
        log_problems=log_problems(run_dir / "run.log"),
        images=images,
        files=files,
    )


@dataclass
class Trial:
    """One row of ``sweep_summary.csv`` with its trial directory's loss series."""

    row: dict[str, str]
    run_dir: Path | None
    params: dict[str, Any]
    losses: list[float]


def sweep_rows(sweep_dir: Path) -> list[dict[str, str]]:
    """The rows of ``sweep_dir/sweep_summary.csv`` (a header-only or missing file: none)."""
    try:
        with open(sweep_dir / "sweep_summary.csv", newline="", encoding="utf-8") as fh:
            return [dict(r) for r in csv.DictReader(fh)]
    except OSError:
        return []


def loss_series(history: list[dict[str, Any]]) -> list[float]:
    """The per-epoch loss a trial is judged by: ``val_loss`` where recorded, else ``train_loss``."""
    key = "val_loss" if any(number(r.get("val_loss")) is not None for r in history) else "train_loss"
    return [v for r in history if (v := number(r.get(key))) is not None]


def trial_dir(sweep_dir: Path, row: dict[str, str]) -> Path | None:
    """The trial's directory: its ``run_dir`` column, else ``run_<NNN>_<config_hash>``."""
    for candidate in (row.get("run_dir") or "", f"run_{str(row.get('trial', '')).zfill(3)}_{row.get('config_hash')}"):
        if not candidate:
            continue
        path = Path(candidate)
        for p in ((sweep_dir / path.name), path):
            if p.is_dir():
                return p
    return None


def load_sweep(sweep_dir: Path) -> list[Trial]:
    """Every summary row (in trial order; the file has them as trials ended) with its parameters and losses.

    Parameters are the columns that are config keys of the trials (read from
    their ``config.yaml``; with none readable, every column that is not a
    summary or metric column).
    """
    ordered = sorted(sweep_rows(sweep_dir), key=lambda r: int(r["trial"]) if str(r.get("trial")).isdigit() else 0)
    rows = [(row, trial_dir(sweep_dir, row)) for row in ordered]
    keys: set[str] = set()
    for _, path in rows:
        if path is not None:
            keys |= set(flat_leaves(read_yaml(path / "config.yaml")))
    if not keys:
        keys = {k for row, _ in rows for k in row if isinstance(k, str)}
    trials = []
    for row, path in rows:
        params = {k: v for k, v in row.items() if k in keys and k not in _NOT_PARAMS}
        losses = loss_series(read_jsonl(path / "history.jsonl")) if path is not None else []
        trials.append(Trial(row, path, params, losses))
    return trials

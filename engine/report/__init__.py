"""HTML reports of a run or a sweep (``report.html``), made from the result files alone.

:func:`write_report` picks the kind from what the directory holds;
:func:`write_report_safely` is what the end of a run or sweep calls: a report
that cannot be written is a logged warning, never a change of the run's outcome.
Importing this package is cheap: Jinja2 (and SciPy, for sweeps) load on first use.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from engine.errors import ConfigError

log = logging.getLogger("engine.report")

__all__ = ["is_run_dir", "is_sweep_dir", "write_report", "write_report_safely"]


def is_sweep_dir(path: Path) -> bool:
    """A sweep directory holds ``sweep_summary.csv`` (or at least trial directories)."""
    return (path / "sweep_summary.csv").is_file() or any(path.glob("run_[0-9][0-9][0-9]_*/config.yaml"))


def is_run_dir(path: Path) -> bool:
    """A run directory holds its ``config.yaml`` or ``metrics.json``."""
    return (path / "config.yaml").is_file() or (path / "metrics.json").is_file()


def write_report(path: Path) -> Path:
    """Write ``path/report.html`` for the run or sweep directory ``path``; return the file.

    Raises :class:`~engine.errors.ConfigError` when ``path`` is neither.
    """
    path = Path(path)
    started = time.perf_counter()
    if path.is_dir() and is_sweep_dir(path):
        from engine.report.sweep_report import write_sweep_report

        out = write_sweep_report(path)
    elif path.is_dir() and is_run_dir(path):
        from engine.report.run_report import write_run_report

        out = write_run_report(path)
    else:
        raise ConfigError("path", str(path), "must be a run directory (holding config.yaml or metrics.json) "
                          "or a sweep directory (holding sweep_summary.csv)")
    log.info("report written in %.2f s: %s", time.perf_counter() - started, out)
    return out


def write_report_safely(path: Path, enabled: bool = True) -> Path | None:
    """:func:`write_report` unless disabled; any failure is logged as a warning and returns None."""
    if not enabled:
        return None
    try:
        return write_report(path)
    except Exception as exc:  # noqa: BLE001 - a report must never change a run's outcome
        log.warning("could not write the report of %s: %s: %s", path, type(exc).__name__, exc)
        return None

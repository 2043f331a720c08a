"""Prometheus ``file_sd`` target file for the trials of one sweep.

Prometheus re-reads the file on change, so a trial's metrics endpoint is
scraped from the moment it is registered until it is removed, with the labels
``sweep``, ``run`` and ``trial`` attached to every series it exposes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.fsutil import atomic_write_text


class TargetsFile:
    """A ``file_sd`` JSON list kept in sync with the registered runs.

    Every change rewrites the whole file atomically (temp file + rename), so
    Prometheus never reads a partial list. Creating the object writes ``[]``;
    :meth:`clear` removes the file. Safe to use from several threads.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._groups: dict[str, dict[str, Any]] = {}
        with self._lock:
            self._write()

    def add(self, run: str, target: str, labels: Mapping[str, object]) -> None:
        """Register (or replace) ``run``'s ``host:port`` target with ``labels``."""
        # Prometheus label values must be strings.
        group = {"targets": [target], "labels": {str(k): str(v) for k, v in labels.items()}}
        with self._lock:
            self._groups[run] = group
            self._write()

    def remove(self, run: str) -> None:
        """Drop ``run``'s target; unknown runs are ignored."""
        with self._lock:
            if self._groups.pop(run, None) is not None:
                self._write()

    def clear(self) -> None:
        """Drop every target and delete the file (end of the sweep)."""
        with self._lock:
            self._groups.clear()
            self.path.unlink(missing_ok=True)

    def targets(self) -> dict[str, str]:
        """Run -> target currently registered (for logging and tests)."""
        with self._lock:
            return {run: g["targets"][0] for run, g in self._groups.items()}

    def _write(self) -> None:
        atomic_write_text(self.path, json.dumps(list(self._groups.values()), indent=2) + "\n")

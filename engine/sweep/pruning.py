"""Pruning from a trial's own per-epoch results: ``history.jsonl`` read as it grows.

The coordinator never parses a trial's stdout: the results sink writes one
JSON line per epoch to ``history.jsonl`` and flushes it, so reading the new
complete lines on every poll gives each epoch's metrics moments after the
trial computed them, for any executor that makes the run directory visible.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Protocol

log = logging.getLogger("engine.sweep")


class ReportingTrial(Protocol):
    """What a watch needs of an Optuna trial (``optuna.trial.Trial``)."""

    def report(self, value: float, step: int) -> None:
        """Record the objective's intermediate value at ``step``."""

    def should_prune(self) -> bool:
        """Whether the pruner stops the trial now."""


class JsonlTail:
    """The new complete lines of a JSONL file that is appended to, parsed.

    A file replaced by a new one (the results sink rewinds its history on a
    resume or rollback by an atomic rewrite) or shortened is read again from
    its start; a partial last line waits for its newline.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._inode: int | None = None
        self._pos = 0
        self._partial = b""

    def rows(self) -> list[dict[str, Any]]:
        """The rows completed since the last call (none while the file is missing)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return []
        if st.st_ino != self._inode or st.st_size < self._pos:
            self._inode, self._pos, self._partial = st.st_ino, 0, b""
        if st.st_size == self._pos:
            return []
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._pos)
                data = fh.read()
        except OSError:
            return []
        self._pos += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        out = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # not ours to judge; the run's own readers report bad rows
            if isinstance(row, dict):
                out.append(row)
        return out


class PruneWatch:
    """Reports one trial's objective per epoch to Optuna and asks its pruner.

    The step is the row's ``epoch``; an epoch already reported (re-run after a
    resume) is not reported again, and non-finite or missing values are skipped.
    """

    def __init__(self, trial: ReportingTrial, history: Path, metric: str, reported: Iterable[int] = ()) -> None:
        self.trial = trial
        self.metric = metric
        self._tail = JsonlTail(history)
        self._reported: set[int] = set(reported)  # steps the study has (a continued trial's earlier epochs)
        self.last: tuple[int, float] | None = None  # (epoch, value) last reported
        self.pruned_at: tuple[int, float] | None = None

    def poll(self, decide: bool = True) -> bool:
        """Report new epochs; True when the pruner says to stop the trial (``decide`` only)."""
        new = False
        for row in self._tail.rows():
            step, value = row.get("epoch"), row.get(self.metric)
            if isinstance(step, bool) or not isinstance(step, (int, float)) or int(step) in self._reported:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            self.trial.report(float(value), int(step))
            self._reported.add(int(step))
            self.last, new = (int(step), float(value)), True
        # Once per poll, not per row: a burst of fast epochs is judged at its last one.
        if decide and new and self.pruned_at is None and self.trial.should_prune():
            self.pruned_at = self.last
            return True
        return False

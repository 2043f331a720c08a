"""Counters that never go backwards across resumes and rollbacks.

Prometheus reads a drop in a counter as a reset to zero and adds the whole
previous value to ``rate()``/``increase()``. A run resumed from a checkpoint
(or rolled back to one) restarts at the checkpoint's totals, which are
*lower* than what the killed process had already exported, so a plain
restore would make every rate spike by the replayed amount.

The ledger therefore keeps, per counter series, the highest total exported
so far and only ever increments past it; at each scrape (before the answer
is sent) it writes those high-water marks to ``prometheus_counters.json`` in
the run directory, so they always cover what Prometheus saw, even after a
SIGKILL. A resumed run starts every progress counter at ``max(high-water
mark, restored total)``: work replayed after a resume or rollback does not
count twice, and the counter is flat (not spiking) while the run catches up.
Incident counters (non-finite steps, rollbacks, sink errors) are per process.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from engine.fsutil import atomic_write_text

log = logging.getLogger(__name__)

FILE_NAME = "prometheus_counters.json"
_SEP = "\x1f"  # label values never contain the unit separator


class CounterLedger:
    """Exported totals of counter series, keyed by ``(metric short name, *label values)``.

    ``child`` returns the labelled prometheus_client counter of a key (the
    sink caches them); every increment goes through :meth:`advance` or
    :meth:`bump` so the ledger always equals what the registry exports.
    """

    def __init__(self, child: Callable[..., Any]) -> None:
        self._child = child
        self.exported: dict[tuple[str, ...], float] = {}
        self._written: dict[tuple[str, ...], float] = {}
        self.path: Path | None = None

    def advance(self, key: tuple[str, ...], total: float) -> None:
        """Raise the series to ``total`` if that is above what was exported (else nothing)."""
        done = self.exported.get(key)
        if done is None:
            self._child(*key)  # expose the series from the start, at 0
            done = self.exported[key] = 0.0
        if total > done:
            self._child(*key).inc(total - done)
            self.exported[key] = total

    def bump(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        """Count ``amount`` new occurrences (events, not totals)."""
        self.advance(key, self.exported.get(key, 0.0) + amount)

    def open(self, run_dir: Path, per_process: frozenset[str] = frozenset()) -> None:
        """Start from the high-water marks a previous process of this run left in ``run_dir``.

        Counters named in ``per_process`` count incidents of one process (a
        non-finite step, a failed sink) and start at 0 again: a resumed run
        is a new attempt, and carrying them would keep their alerts up for
        its whole life. A drop to 0 is a plain reset to ``rate()``, no spike.
        """
        self.path = Path(run_dir) / FILE_NAME
        try:
            marks = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:  # a torn file is impossible (atomic), an edited one is not
            log.warning("ignoring unreadable %s: %s", self.path, exc)
            return
        for name, value in marks.items():
            key = tuple(name.split(_SEP))
            if key[0] not in per_process:
                self.advance(key, float(value))

    def persist(self) -> None:
        """Write the high-water marks if they changed (called at scrape time, before the answer)."""
        if self.path is None or self.exported == self._written:
            return
        try:
            atomic_write_text(self.path, json.dumps({_SEP.join(k): v for k, v in self.exported.items()}))
            self._written = dict(self.exported)
        except OSError as exc:  # the scrape must still be answered
            log.warning("cannot write %s: %s", self.path, exc)

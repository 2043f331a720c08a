"""Where a sweep's trials come from: a fixed list (grid) or a study fed by results.

The runner asks its :class:`TrialSource` for a trial whenever a slot is free,
lets it watch every running trial on each poll (the search source reads the
trial's ``history.jsonl`` there, for pruning), and hands it every ended
trial's summary row twice: :meth:`TrialSource.result` before the row is
written (it may set the status, e.g. ``pruned``) and :meth:`TrialSource.commit`
after it was written (the study records the outcome then, so a crash between
the two leaves a summary row that a resume trusts, never a study result
without its row).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Protocol

from engine.config import parameters
from engine.sweep.executor import TrialHandle
from engine.sweep.grid import Trial

log = logging.getLogger("engine.sweep")

#: Summary statuses a grid resume does not run again.
FINAL_STATUSES = frozenset({"finished", "diverged", "pruned"})


class TrialSource(Protocol):
    """Trials for :func:`engine.sweep.runner.run_sweep`, handed out as slots free up."""

    #: Summary columns after the fixed ones (parameters first).
    param_keys: list[str]

    def next_trial(self) -> Trial | None:
        """The next trial to start, or None when none is to be started now."""

    def exhausted(self) -> bool:
        """True once no trial will ever be handed out again."""

    def stop(self) -> None:
        """The sweep was interrupted: hand out nothing more."""

    def watch(self, trial: Trial, run_dir: Path, handle: TrialHandle) -> None:
        """Called on every poll while ``trial`` runs (may stop it through ``handle``)."""

    def result(self, trial: Trial, run_dir: Path, row: dict[str, Any]) -> dict[str, Any]:
        """The summary row of an ended trial (``row`` as the runner read it; may be changed)."""

    def commit(self, trial: Trial, row: dict[str, Any]) -> None:
        """``row`` is in the summary now: record the outcome wherever else it goes."""


class ListSource:
    """A fixed list of trials in order (a grid), minus those already ``done``."""

    def __init__(self, trials: Iterable[Trial], done: Iterable[tuple[int, str]] = ()) -> None:
        skip = set(done)  # (index, config_hash) of trials a resume does not run again
        trials = list(trials)
        self.pending = [t for t in trials if (t.index, t.config_hash) not in skip]
        # The grid's own keys first, then every other result-relevant parameter.
        self.param_keys = list(dict.fromkeys([*(k for t in trials for k in t.params),
                                              *(k for t in trials for k in parameters(t.config))]))
        if len(self.pending) < len(trials):
            log.info("resume: %d of %d trial(s) already final, %d to run", len(trials) - len(self.pending),
                     len(trials), len(self.pending))

    def next_trial(self) -> Trial | None:
        return self.pending.pop(0) if self.pending else None

    def exhausted(self) -> bool:
        return not self.pending

    def stop(self) -> None:
        if self.pending:
            log.warning("%d trial(s) not started", len(self.pending))
        self.pending.clear()

    def watch(self, trial: Trial, run_dir: Path, handle: TrialHandle) -> None:
        """A grid trial always runs to its end."""

    def result(self, trial: Trial, run_dir: Path, row: dict[str, Any]) -> dict[str, Any]:
        return row

    def commit(self, trial: Trial, row: dict[str, Any]) -> None:
        """Nothing beyond the summary row."""

"""Sweep files -> validated plans; what a sweep directory keeps so ``--resume`` can continue it.

A plan is one sweep file resolved against the CLI's flags: a grid (its trial
list) or a search (its validated ``search:`` block and fixed config). Every
file is planned before any trial starts, so bad input writes nothing. At the
start of a sweep :func:`save_plan` writes the file as read
(``sweep_spec.yaml``) and the CLI settings (``sweep_state.json``) into the
sweep directory; :func:`load_plan` rebuilds the same plan from them, and
:func:`make_source` turns a plan into the runner's trial source, skipping
what a previous run of the directory settled.
"""

from __future__ import annotations

import fcntl
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from engine.errors import ConfigError
from engine.fsutil import atomic_write_text
from engine.sweep.grid import SWEEP_KEY, Trial, grid_values, load_sweep_files, resolve_trials, sweep_settings
from engine.sweep.search import SEARCH_KEY, SearchSpec, parse_search
from engine.sweep.source import FINAL_STATUSES, ListSource, TrialSource
from engine.sweep.summary import keep_rows

log = logging.getLogger("engine.sweep")

STATE_FILE = "sweep_state.json"
SPEC_FILE = "sweep_spec.yaml"
SUMMARY_FILE = "sweep_summary.csv"
_LOCK_FILE = ".coordinator.lock"


@dataclass
class SweepPlan:
    """One sweep file resolved: ``trials`` for a grid, ``search`` + ``fixed`` for a search."""

    name: str
    mapping: dict[str, Any]
    base: dict[str, Any]  # the flat options given on the CLI (defaults for every trial)
    parallel: int  # trials at once: --parallel, else sweep.parallel, else 1
    trials: list[Trial] = field(default_factory=list)
    search: SearchSpec | None = None
    fixed: dict[str, Any] = field(default_factory=dict)

    @property
    def n_trials(self) -> int:
        """How many trials the sweep runs in all."""
        return self.search.total_trials() if self.search is not None else len(self.trials)


def plan_sweep(name: str, mapping: dict[str, Any], base: dict[str, Any], parallel: int | None) -> SweepPlan:
    """Validate one sweep mapping (raises :class:`ConfigError`) into a plan."""
    n_parallel = parallel or sweep_settings(mapping).parallel or 1
    if SEARCH_KEY not in mapping:
        return SweepPlan(name, mapping, base, n_parallel, trials=resolve_trials(base, mapping))
    fixed = dict(base)
    for key, value in mapping.items():
        if key in (SWEEP_KEY, SEARCH_KEY):
            continue
        values = grid_values(str(key), value)
        if len(values) != 1:
            raise ConfigError(str(key), value, "a search sweep takes one value per top-level key; "
                              "give ranges under search.parameters")
        fixed[str(key)] = values[0]
    return SweepPlan(name, mapping, base, n_parallel, search=parse_search(mapping[SEARCH_KEY], fixed),
                     fixed=fixed)


def plan_sweeps(base: dict[str, Any], path: Path, parallel: int | None) -> list[SweepPlan]:
    """Plan every sweep file at ``path`` (a file or a directory of them)."""
    return [plan_sweep(name, mapping, base, parallel) for name, mapping in load_sweep_files(path)]


def save_plan(plan: SweepPlan, sweep_dir: Path, cli_parallel: int | None, file_sd_dir: Path | None) -> None:
    """Keep what a resume needs in ``sweep_dir`` (the file as read, the CLI settings)."""
    atomic_write_text(Path(sweep_dir) / SPEC_FILE, yaml.safe_dump(plan.mapping, sort_keys=False))
    state = {"name": plan.name, "kind": "search" if plan.search else "grid", "base": plan.base,
             "parallel": cli_parallel, "file_sd_dir": str(file_sd_dir) if file_sd_dir else None}
    atomic_write_text(Path(sweep_dir) / STATE_FILE, json.dumps(state, indent=2) + "\n")


def is_sweep_dir(path: Path) -> bool:
    """Whether ``path`` is a sweep directory a resume can continue."""
    return (Path(path) / STATE_FILE).is_file() and (Path(path) / SPEC_FILE).is_file()


def load_plan(sweep_dir: Path, parallel: int | None) -> tuple[SweepPlan, Path | None]:
    """The plan saved in ``sweep_dir`` and its file_sd directory (``parallel`` overrides the saved one)."""
    try:
        state = json.loads((Path(sweep_dir) / STATE_FILE).read_text())
        mapping = yaml.safe_load((Path(sweep_dir) / SPEC_FILE).read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError("resume", str(sweep_dir), f"unreadable sweep state: {exc}") from None
    plan = plan_sweep(state["name"], mapping, state["base"], parallel or state.get("parallel"))
    sd = state.get("file_sd_dir")
    return plan, Path(sd) if sd else None


def lock_sweep(sweep_dir: Path) -> IO[str]:
    """Hold the sweep directory's coordinator lock (until the returned file is closed).

    The kernel drops the lock when its holder dies, even by SIGKILL, so only a
    live coordinator makes a resume of the same directory fail.
    """
    fh = open(Path(sweep_dir) / _LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise ConfigError("resume", str(sweep_dir), "its sweep is still running (another process holds "
                          f"{_LOCK_FILE}); stop it first") from None
    return fh


def make_source(plan: SweepPlan, sweep_dir: Path, resume: bool = False) -> TrialSource:
    """The trial source of ``plan`` in ``sweep_dir``; on a resume without what is settled.

    Grid: trials whose summary row is final (finished, diverged) are skipped,
    the others run again in their directories (continuing from a checkpoint).
    Search: the study in ``study.db`` decides (see :mod:`engine.sweep.study`).
    The summary keeps only the rows of settled trials, so it ends with one row
    per trial.
    """
    summary = Path(sweep_dir) / SUMMARY_FILE
    if plan.search is None:
        rows = keep_rows(summary, lambda r: r.get("status") in FINAL_STATUSES) if resume else []
        return ListSource(plan.trials, done={(int(r["trial"]), r["config_hash"]) for r in rows})
    from engine.sweep.study import SETTLED, StudySource, open_study  # optuna only for searches

    rows = keep_rows(summary, lambda r: r.get("status") in SETTLED) if resume else []
    study = open_study(plan.search, sweep_dir, plan.name)
    return StudySource(plan.search, plan.fixed, study, rows={int(r["trial"]): r for r in rows})

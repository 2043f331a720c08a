"""The sweep command: YAML grid -> trials in subprocesses -> summary CSV."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import click

from engine.config import RunConfig
from engine.sweep.grid import load_sweep_files, resolve_trials, sweep_settings
from engine.sweep.runner import run_sweep

log = logging.getLogger("engine.cli")


def run_sweep_command(flat: dict[str, Any], cfg: RunConfig, path: Path, parallel: int | None,
                      file_sd_dir: Path | None) -> int:
    """Expand every sweep file, run its trials, and return the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    # Expand and validate every file before any trial starts: bad input writes nothing.
    sweeps = [(name, resolve_trials(flat, mapping), parallel or sweep_settings(mapping).parallel or 1)
              for name, mapping in load_sweep_files(path)]
    failed = 0
    root = Path(cfg.output_dir)
    for name, trials, n_parallel in sweeps:
        sweep_dir = _new_sweep_dir(root / "sweeps", name)
        click.echo(f"sweep {name}: {len(trials)} trials -> {sweep_dir}", err=True)
        result = run_sweep(trials, sweep_dir, sweep_name=name, parallel=n_parallel,
                           file_sd_dir=file_sd_dir or root / "file_sd")
        failed += result.failed
        click.echo(f"sweep {name}: {len(result.rows)} trials done, {result.failed} failed; "
                   f"summary {sweep_dir / 'sweep_summary.csv'}", err=True)
        if result.interrupted:
            return 130
    return 1 if failed else 0


def _new_sweep_dir(parent: Path, name: str) -> Path:
    """Create ``parent/<time>_<name>`` exclusively (``-2``, ``-3``... if taken).

    Two sweeps of one name started in the same second must not share trial
    directories: a trial directory keeps its checkpoint and run identity.
    """
    base = f"{time.strftime('%Y%m%d-%H%M%S')}_{name}"
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = parent / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"no free sweep directory name for {base} in {parent}")

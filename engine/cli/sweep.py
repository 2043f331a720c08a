"""The sweep command: YAML grid or search -> trials in subprocesses -> summary CSV; sweep resume."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import click

from engine.config import RunConfig, build_config
from engine.errors import ConfigError
from engine.report import write_report_safely
from engine.sweep.executor import Executor
from engine.sweep.plan import SweepPlan, load_plan, lock_sweep, make_source, plan_sweeps, save_plan
from engine.sweep.runner import run_sweep

log = logging.getLogger("engine.cli")


def run_sweep_command(flat: dict[str, Any], cfg: RunConfig, path: Path, parallel: int | None,
                      file_sd_dir: Path | None, executor: Executor | None = None) -> int:
    """Plan every sweep file (grid or search), run its trials, and return the exit code."""
    _setup_logging()
    # Plan and validate every file before any trial starts: bad input writes nothing.
    plans = plan_sweeps(flat, path, parallel)
    failed = 0
    root = Path(cfg.output_dir)
    for plan in plans:
        sweep_dir = _new_sweep_dir(root / "sweeps", plan.name)
        save_plan(plan, sweep_dir, parallel, file_sd_dir)
        code = _run_plan(plan, sweep_dir, file_sd_dir or root / "file_sd", resume=False, executor=executor)
        if code == 130:
            return 130
        failed += code
    return 1 if failed else 0


def resume_sweep_command(sweep_dir: Path, flat: dict[str, Any], parallel: int | None,
                         file_sd_dir: Path | None, executor: Executor | None = None) -> int:
    """Continue the sweep in ``sweep_dir`` with its saved file and CLI settings."""
    if flat:  # the saved settings define every trial; changing one would make other trials
        key = next(iter(flat))
        raise ConfigError(key, flat[key], "a sweep resumes with its saved settings; with --resume SWEEP_DIR "
                          "give only --parallel, --file_sd_dir and the executor options (--executor, --ray_address, "
                          "--trial_cpus, --trial_gpus)")
    plan, saved_sd = load_plan(sweep_dir, parallel)
    _setup_logging()
    root = Path(build_config(plan.base).output_dir)
    return _run_plan(plan, sweep_dir, file_sd_dir or saved_sd or root / "file_sd", resume=True,
                     executor=executor)


def _run_plan(plan: SweepPlan, sweep_dir: Path, file_sd_dir: Path, *, resume: bool,
              executor: Executor | None) -> int:
    """Run one planned sweep in ``sweep_dir``: 0 ok, 1 a trial failed, 130 interrupted."""
    lock = lock_sweep(sweep_dir)  # held until the end: a second coordinator would run trials twice
    try:
        source = make_source(plan, sweep_dir, resume=resume)
        kind = f"{plan.search.method} search" if plan.search else "grid"
        click.echo(f"sweep {plan.name}: {plan.n_trials} trials ({kind}) "
                   f"{'resumed in' if resume else '->'} {sweep_dir}", err=True)
        t0 = time.monotonic()
        result = run_sweep(source, sweep_dir, sweep_name=plan.name, parallel=plan.parallel,
                           file_sd_dir=file_sd_dir, executor=executor)
    finally:
        lock.close()
    write_report_safely(sweep_dir, plan.base.get("report") is not False)  # unless --no_report
    pruned = sum(r["status"] == "pruned" for r in result.rows)
    click.echo(f"sweep {plan.name}: {len(result.rows)} trials done ({pruned} pruned), {result.failed} failed "
               f"in {time.monotonic() - t0:.0f} s; summary {sweep_dir / 'sweep_summary.csv'}", err=True)
    best = getattr(source, "best", lambda: None)()
    if best is not None:
        index, value, params = best
        click.echo(f"sweep {plan.name}: best trial {index:03d}: {plan.search.objective.metric} "  # type: ignore[union-attr]
                   f"{value:.5g} with " + ", ".join(f"{k}={v!r}" for k, v in params.items()), err=True)
    if result.interrupted:
        return 130
    return 1 if result.failed else 0


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("optuna", "alembic", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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

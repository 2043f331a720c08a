"""``plasticity export``: flat metrics JSON and CSV curves of a run or a sweep (DVC metrics and plots).

``plasticity export RUN_DIR --metrics M.json --plots H.csv`` writes the run's
final numbers as one flat JSON object and its per-epoch history as CSV
(``--copy_to DIR``: a copy of the whole run directory, e.g. to write a report
into without changing the run);
``plasticity export SWEEP --metrics M.json --plots S.csv`` (a sweep directory,
or the ``--output_dir`` of a sweep) writes the trial count, failures and best
trial, and a copy of ``sweep_summary.csv``. See :mod:`engine.export`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from engine.errors import ConfigError
from engine.export import (SUMMARY_NAME, find_sweep_summary, history_rows, run_metrics, sweep_metrics,
                           sweep_rows, write_csv, write_json)

_FILE = click.Path(path_type=Path, dir_okay=False)


@click.command("export", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--metrics", "metrics_file", type=_FILE, default=None,
              help="Write the final numbers here as flat JSON (a run: metrics.json's metrics and 'finished'; "
              "a sweep: trials, finished, failed, best_val_loss and best_trial).")
@click.option("--plots", "plots_file", type=_FILE, default=None,
              help="Write a CSV table here (a run: one row per epoch of history.jsonl; a sweep: "
              f"its {SUMMARY_NAME}).")
@click.option("--copy_to", type=click.Path(path_type=Path, file_okay=False), default=None, metavar="DIR",
              help="Copy the run directory (every file) to DIR, which must not exist yet: e.g. `plasticity "
              "report DIR` then writes DIR/report.html without changing the run (a DVC stage's output).")
def export(source: Path, metrics_file: Path | None, plots_file: Path | None, copy_to: Path | None) -> int:
    """Write flat metrics JSON and CSV curves of the run or sweep SOURCE (e.g. for dvc metrics / dvc plots).

    SOURCE is a run directory (holding metrics.json), a sweep directory
    (holding sweep_summary.csv) or a sweep's --output_dir.
    """
    if metrics_file is None and plots_file is None and copy_to is None:
        raise ConfigError("export", str(source), "at least one of --metrics FILE, --plots FILE, --copy_to DIR")
    if not source.is_dir():
        raise ConfigError("source", str(source), "an existing run directory (holding metrics.json), sweep "
                          f"directory (holding {SUMMARY_NAME}) or sweep output directory")
    if copy_to is not None and copy_to.exists():  # checked before anything is written
        raise ConfigError("copy_to", str(copy_to), "a directory that does not exist yet")
    if (source / "metrics.json").is_file():
        metrics = run_metrics(source) if metrics_file is not None else None  # read everything, then write
        columns, rows = history_rows(source) if plots_file is not None else ([], [])
        if metrics_file is not None and metrics is not None:
            write_json(metrics_file, metrics)
            click.echo(f"export: {len(metrics)} metrics of {source} -> {metrics_file}", err=True)
        if plots_file is not None:
            write_csv(plots_file, columns, rows)
            click.echo(f"export: {len(rows)} epochs of {source} -> {plots_file}", err=True)
        if copy_to is not None:
            shutil.copytree(source, copy_to)
            click.echo(f"export: copied {source} -> {copy_to}", err=True)
        return 0
    if copy_to is not None:
        raise ConfigError("copy_to", str(copy_to), "only with a run directory as SOURCE (holding metrics.json)")
    summary = find_sweep_summary(source)
    columns, rows = sweep_rows(source)
    if metrics_file is not None:
        write_json(metrics_file, sweep_metrics(rows))
        click.echo(f"export: sweep summary of {summary.parent} ({len(rows)} trials) -> {metrics_file}", err=True)
    if plots_file is not None:
        write_csv(plots_file, columns, rows)
        click.echo(f"export: {summary} -> {plots_file}", err=True)
    return 0

"""``plasticity report PATH``: write the HTML report of a run or sweep directory."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click


@click.command("report")
@click.argument("path", type=click.Path(path_type=Path))
def report(path: Path) -> int:
    """Write PATH/report.html for the run directory or sweep directory PATH.

    The page works offline (plotly.min.js is placed beside it) with tabs for a
    run's overview, structural events, figures, text samples, faults and files,
    or a sweep's trials, rankings, best configurations, parameter effects and
    grouped statistics. Runs and sweeps write it themselves unless --no_report.
    """
    from engine.report import write_report

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    started = time.perf_counter()
    out = write_report(path)  # a path that is neither kind: ConfigError, one line and exit 2
    click.echo(f"report: {out} ({time.perf_counter() - started:.2f} s)", err=True)
    return 0

"""``plasticity`` / ``python scripts/run.py``: run one experiment or a sweep.

Exit codes: 0 finished, 1 failed (or any sweep trial failed), 2 bad input,
3 diverged, 130 interrupted.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import click

from engine.cli.options import config_options, given
from engine.cli.stack import stack
from engine.cli.wiring import EXIT_CODES, console_mode_is_rich, execute_run
from engine.config import RunConfig, build_config, load_yaml
from engine.errors import ConfigError
from engine.identity import RunIdentity, new_identity
from engine.resume import RESUME_TRAIN_KEYS, resume_config

log = logging.getLogger("engine.cli")

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("urllib3", "mlflow", "alembic", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(invoke_without_command=True, context_settings=CONTEXT)
@config_options
@click.option("-s", "--sweep_config", type=click.Path(path_type=Path), default=None,
              help="Sweep YAML file, or a directory of them: run the grid instead of one run.")
@click.option("--parallel", type=click.IntRange(min=1, max=64), default=None,
              help="Sweep trials run at once, each in its own process with its own metrics port "
              "[default: the YAML's sweep.parallel, else 1].")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), default=None,
              metavar="RUN_DIR",
              help="Continue a killed or interrupted run from RUN_DIR/checkpoint.pt with its saved "
              "config.yaml and run_id. Only runtime options may be given with it: every telemetry "
              "option (--metrics_port, --console, --no_tensorboard, ...) and "
              + ", ".join(f"--{k}" for k in RESUME_TRAIN_KEYS) + "; they are saved to its config.yaml, "
              "so a later --resume keeps them. Any other option is an error.")
@click.option("--file_sd_dir", type=click.Path(path_type=Path), default=None,
              help="Where sweeps write Prometheus file_sd targets [default: OUTPUT_DIR/file_sd].")
@click.pass_context
def cli(ctx: click.Context, sweep_config: Path | None, parallel: int | None, resume_dir: Path | None,
        file_sd_dir: Path | None, **overrides: Any) -> int:
    """Train a structural-plasticity experiment with live telemetry.

    With no options, runs the default experiment (morphogenetic seeds on two
    spirals), serves metrics at http://127.0.0.1:8000/metrics and writes its
    results under results/runs/. Every option below overrides the config; in a
    sweep, YAML values override these in turn.
    """
    flat = given(overrides)
    if ctx.invoked_subcommand is not None:
        if flat:  # subcommands take their own options; these would be silently ignored
            raise ConfigError(next(iter(flat)), flat[next(iter(flat))],
                              f"run options cannot be combined with the '{ctx.invoked_subcommand}' "
                              "command, which takes only its own options (see its --help)")
        return 0
    if resume_dir is not None:
        return _resume(resume_dir, flat)
    cfg = build_config(flat)  # validates before anything is written
    if sweep_config is not None:
        from engine.cli.sweep import run_sweep_command

        return run_sweep_command(flat, cfg, sweep_config, parallel, file_sd_dir)
    _setup_logging(quiet=console_mode_is_rich(cfg.telemetry.console))
    identity, run_dir = _new_run_dir(cfg)
    return _finish(execute_run(cfg, run_dir, identity=identity), run_dir)


def _new_run_dir(cfg: RunConfig) -> tuple[RunIdentity, Path]:
    """A new launch's identity and ``OUTPUT_DIR/runs/<time>_<run_id>`` (not created yet).

    The unique run_id in the name keeps two launches of one config in the same
    second apart; execute_run creates the directory exclusively, so even a
    random-suffix collision fails loudly instead of mixing two runs.
    """
    while True:
        identity = new_identity(cfg)
        run_dir = Path(cfg.output_dir) / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}_{identity.run_id}"
        if not run_dir.exists():
            return identity, run_dir


def _resume(run_dir: Path, flat: dict[str, Any]) -> int:
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError("resume", str(run_dir), "must be a run directory holding config.yaml")
    # Runtime options (ports, sinks, device, ...) may change; the experiment may not.
    cfg = resume_config(load_yaml(run_dir / "config.yaml"), flat)
    _setup_logging(quiet=console_mode_is_rich(cfg.telemetry.console))
    return _finish(execute_run(cfg, run_dir, resume=True), run_dir)


def _finish(outcome: Any, run_dir: Path) -> int:
    acc = outcome.metrics.get("val_accuracy")
    extra = f", val_accuracy {acc:.4f}" if isinstance(acc, float) else ""
    click.echo(f"{outcome.status}: {run_dir}{extra}", err=True)
    return EXIT_CODES.get(outcome.status, 1)


@cli.command("trial", hidden=True)
@click.argument("run_dir", type=click.Path(path_type=Path))
def trial(run_dir: Path) -> int:
    """Run the sweep trial whose config.yaml is in RUN_DIR (used by sweeps)."""
    cfg = load_yaml(run_dir / "config.yaml")
    _setup_logging(quiet=True)
    return EXIT_CODES.get(execute_run(cfg, run_dir, resume=(run_dir / "checkpoint.pt").exists()).status, 1)


@cli.command("metrics")
def metrics_cmd() -> int:
    """List every exported metric (name, type, labels, families, help) from the catalog."""
    from engine.telemetry.catalog import CATALOG

    for m in CATALOG:
        click.echo(f"{m.name}\t{m.kind}\t{','.join(m.labels)}\t{','.join(m.families) or 'all'}\t{m.help}")
    return 0


cli.add_command(stack)


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input prints one line and returns 2, never a traceback."""
    try:
        rv = cli.main(args=argv, prog_name="plasticity", standalone_mode=False)
    except click.UsageError as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return 2
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except click.Abort:
        return 130
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - already logged with its traceback (run.log)
        click.echo(f"error: run failed: {type(exc).__name__}: {exc}", err=True)
        return EXIT_CODES["failed"]
    return int(rv or 0)

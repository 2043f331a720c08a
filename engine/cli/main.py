"""``plasticity`` / ``python scripts/run.py``: run one experiment or a sweep.

Exit codes: 0 finished, 1 failed (or any sweep trial failed), 2 bad input,
3 diverged, 130 interrupted.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from engine.cli.data import data as data_cmd
from engine.cli.export import export as export_cmd
from engine.cli.options import config_options, given
from engine.cli.report import report as report_cmd
from engine.cli.stack import stack
from engine.config import RunConfig, build_config, load_yaml
from engine.errors import ConfigError
from engine.identity import RunIdentity, new_identity
from engine.resume import RESUME_TRAIN_KEYS, resume_config
from engine.sweep.executor import EXECUTORS, METRICS_HOST_ENV, Executor, make_executor

log = logging.getLogger("engine.cli")

#: Exit code of each final run status (see the module docstring).
EXIT_CODES = {"finished": 0, "failed": 1, "diverged": 3, "interrupted": 130}

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
              "so a later --resume keeps them. Any other option is an error. A sweep directory "
              "(OUTPUT_DIR/sweeps/<sweep>) continues that sweep: settled trials are skipped, the others "
              "run again or continue from their checkpoints; only --parallel, --file_sd_dir and the executor options may be given.")
@click.option("--file_sd_dir", type=click.Path(path_type=Path), default=None,
              help="Where sweeps write Prometheus file_sd targets [default: OUTPUT_DIR/file_sd].")
@click.option("--executor", "executor_name", type=click.Choice(EXECUTORS), default="local", show_default=True,
              help="Where sweep trials run: local subprocesses, or one Ray actor per trial on a Ray cluster "
              "(needs `pip install -r requirements-ray.txt`).")
@click.option("--ray_address", default=None, metavar="HOST:PORT",
              help="Ray cluster of --executor ray [default: $RAY_ADDRESS, else a local Ray started for the sweep].")
@click.option("--trial_cpus", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="CPUs Ray reserves for each sweep trial (--executor ray).")
@click.option("--trial_gpus", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="GPUs Ray reserves for each sweep trial (--executor ray).")
@click.option("--run_dir", "fixed_run_dir", type=click.Path(path_type=Path), default=None, metavar="RUN_DIR",
              help="Write the run into RUN_DIR, which must not exist yet, instead of "
              "OUTPUT_DIR/runs/<time>_<run_id> (a fixed path, e.g. for a DVC stage); not part of the config hash.")
@click.pass_context
def cli(ctx: click.Context, sweep_config: Path | None, parallel: int | None, resume_dir: Path | None,
        file_sd_dir: Path | None, fixed_run_dir: Path | None, executor_name: str, ray_address: str | None,
        trial_cpus: float, trial_gpus: float, **overrides: Any) -> int:
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
    if fixed_run_dir is not None and (resume_dir is not None or sweep_config is not None):
        raise ConfigError("run_dir", str(fixed_run_dir), "a new single run's directory: not with --resume or -s")
    ray_opts = {"ray_address": ray_address, "trial_cpus": trial_cpus, "trial_gpus": trial_gpus}
    if executor_name != "local" and sweep_config is None and resume_dir is None:
        raise ConfigError("executor", executor_name, "only for sweeps (-s/--sweep_config or --resume SWEEP_DIR)")
    executor = make_executor(executor_name, **ray_opts)  # bad input (no ray, bad address) fails here
    if resume_dir is not None:
        return _resume(resume_dir, flat, parallel, file_sd_dir, executor)
    cfg = build_config(flat)  # validates before anything is written
    if sweep_config is not None and cfg.train.nproc > 1:
        raise ConfigError("nproc", cfg.train.nproc, "1 with -s/--sweep_config (each trial is one process)")
    if sweep_config is not None:
        from engine.cli.sweep import run_sweep_command

        return run_sweep_command(flat, cfg, sweep_config, parallel, file_sd_dir, executor=executor)
    if _data_parallel(cfg):
        return _run_data_parallel(cfg, None, fixed_run_dir)
    from engine.cli.wiring import console_mode_is_rich, execute_run  # torch and the sinks: a run needs them

    _setup_logging(quiet=console_mode_is_rich(cfg.telemetry.console))
    identity, run_dir = _new_run_dir(cfg, fixed_run_dir)
    return _finish(execute_run(cfg, run_dir, identity=identity), run_dir)


def _data_parallel(cfg: RunConfig) -> bool:
    """Whether this is a data-parallel run (``--nproc N`` or a torchrun worker: engine/cli/ddp.py)."""
    from engine.cli.ddp import wants_data_parallel

    return wants_data_parallel(cfg)


def _run_data_parallel(cfg: RunConfig, resume_dir: Path | None, fixed_run_dir: Path | None) -> int:
    from engine.cli.ddp import run_data_parallel

    return run_data_parallel(cfg, resume_dir, fixed_run_dir, _new_run_dir, _finish,
                             lambda quiet: _setup_logging(quiet=quiet))


def _new_run_dir(cfg: RunConfig, fixed: Path | None = None) -> tuple[RunIdentity, Path]:
    """A new launch's identity and ``fixed`` or ``OUTPUT_DIR/runs/<time>_<run_id>`` (not created yet).

    The unique run_id in the name keeps two launches of one config in the same
    second apart; execute_run creates the directory exclusively, so even a
    random-suffix collision fails loudly instead of mixing two runs. A ``fixed``
    directory (``--run_dir``) that exists already is bad input.
    """
    if fixed is not None:
        if fixed.exists():
            raise ConfigError("run_dir", str(fixed), "a directory that does not exist yet "
                              "(a run never writes into an existing directory; --resume continues one)")
        return new_identity(cfg), fixed
    while True:
        identity = new_identity(cfg)
        run_dir = Path(cfg.output_dir) / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}_{identity.run_id}"
        if not run_dir.exists():
            return identity, run_dir


def _resume(run_dir: Path, flat: dict[str, Any], parallel: int | None = None,
            file_sd_dir: Path | None = None, executor: Executor | None = None) -> int:
    from engine.sweep.plan import is_sweep_dir

    if is_sweep_dir(run_dir):  # a sweep directory: finish its unsettled trials
        from engine.cli.sweep import resume_sweep_command

        return resume_sweep_command(run_dir, flat, parallel, file_sd_dir, executor=executor)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError("resume", str(run_dir), "must be a run directory holding config.yaml, "
                          "or a sweep directory holding sweep_state.json")
    # Runtime options (ports, sinks, device, ...) may change; the experiment may not.
    cfg = resume_config(load_yaml(run_dir / "config.yaml"), flat)
    if _data_parallel(cfg):
        return _run_data_parallel(cfg, run_dir, None)
    from engine.cli.wiring import console_mode_is_rich, execute_run

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
    if os.environ.get(METRICS_HOST_ENV):  # set by the Ray executor: bind where Prometheus can reach
        cfg = cfg.model_copy(update={"telemetry": cfg.telemetry.model_copy(
            update={"metrics_host": os.environ[METRICS_HOST_ENV]})})
    _setup_logging(quiet=True)
    from engine.cli.wiring import execute_run

    return EXIT_CODES.get(execute_run(cfg, run_dir, resume=(run_dir / "checkpoint.pt").exists()).status, 1)


@cli.command("metrics")
def metrics_cmd() -> int:
    """List every exported metric (name, type, labels, families, help) from the catalog."""
    from engine.telemetry.catalog import CATALOG

    for m in CATALOG:
        click.echo(f"{m.name}\t{m.kind}\t{','.join(m.labels)}\t{','.join(m.families) or 'all'}\t{m.help}")
    return 0


cli.add_command(stack)
cli.add_command(report_cmd)
cli.add_command(data_cmd)
cli.add_command(export_cmd)


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

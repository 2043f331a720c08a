"""Wire one run: experiment + trainer + bus + sinks, logging and signals."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from engine.config import RunConfig, dump_yaml, load_yaml
from engine.errors import ConfigError
from engine.fsutil import atomic_write_text
from engine.identity import RunIdentity, legacy_identity, new_identity, read_identity, write_identity
from engine.registry import get_experiment
from engine.report import write_report_safely
from engine.sinks.results import ResultsSink
from engine.telemetry.bus import EventBus
from engine.telemetry.events import RunEnded, RunStarted
from engine.telemetry.threaded import ThreadedSink
from engine.training.trainer import Outcome, Trainer, pick_device

log = logging.getLogger("engine.run")

#: Process exit code per final run status (2 is reserved for bad input).
@contextmanager
def run_logging(run_dir: Path) -> Iterator[None]:
    """Add ``run_dir/run.log`` to the root logger for the duration of a run."""
    handler = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


@contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """SIGINT/SIGTERM ask the trainer to stop after the current step."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        log.warning("received %s: finishing the current step", signal.Signals(signum).name)
        trainer.request_stop()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _sink_names(cfg: RunConfig) -> tuple[str, ...]:
    """Names of the enabled sinks (labels of ``plasticity_sink_errors_total``)."""
    t = cfg.telemetry
    names = ["results"] + [n for n, on in (("tensorboard", t.tensorboard), ("mlflow", t.mlflow),
                                           ("console", t.console != "off")) if on]
    return tuple(names + (["prometheus"] if t.metrics_port else []))


def _serve_metrics(cfg: RunConfig) -> Any:
    """Bind the metrics endpoint (or return None when disabled).

    Called before anything is written, so a busy port is bad input that leaves
    no run directory behind.
    """
    t = cfg.telemetry
    if not t.metrics_port:
        return None
    from engine.sinks.prometheus import PrometheusSink

    return PrometheusSink(t.metrics_port, t.metrics_host, t.auto_port, _sink_names(cfg), t.neuron_topk)


def _announce(prom: Any, run_dir: Path) -> None:
    """Write ``endpoint.json`` (sweeps register the trial for Prometheus from it)."""
    atomic_write_text(run_dir / "endpoint.json", json.dumps({"host": prom.host, "port": prom.port}))
    log.info("metrics at http://%s:%d/metrics", prom.host, prom.port)


def _sinks(cfg: RunConfig, run_dir: Path, bus: EventBus, phases: dict[str, int], prom: Any) -> None:
    """Attach ``prom`` (if any) and the other enabled sinks."""
    t = cfg.telemetry
    if prom is not None:
        _announce(prom, run_dir)
        bus.attach(prom)
    bus.attach(ResultsSink(run_dir))
    if t.tensorboard:
        from engine.sinks.tensorboard import TensorBoardSink

        bus.attach(ThreadedSink(TensorBoardSink(run_dir / "tensorboard", t.histogram_every)))
    if t.mlflow:
        from engine.sinks.mlflow_sink import MlflowSink

        # MLflow retries an unreachable server for minutes by default; on its
        # worker thread that only delays the failure report, so keep it short.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (Path(cfg.output_dir).resolve() / "mlruns").as_uri()
        bus.attach(ThreadedSink(MlflowSink(run_dir, run_dir.name, tracking_uri=uri)))
    if t.console != "off":
        from engine.sinks.console import ConsoleSink

        bus.attach(ConsoleSink(t.console, phases))


def _report_setup_failure(cfg: RunConfig, run_dir: Path, identity: RunIdentity, device: str,
                          prom: Any, exc: Exception) -> None:
    """Make a run that crashed before training visible like any failed run.

    metrics.json says ``failed`` with the error, and the endpoint (if any)
    serves ``run_status{status="failed"}`` until a scrape has seen it, so
    RunFailed pages for it exactly as for a crash during training.
    """
    bus = EventBus()
    if prom is not None:
        _announce(prom, run_dir)
        bus.attach(prom)
    bus.attach(ResultsSink(run_dir))
    bus.publish(RunStarted(identity.run_id, cfg.experiment, cfg.to_dict(), str(run_dir), device, 0, 0,
                           phases=(), config_hash=identity.config_hash))
    bus.publish(RunEnded(identity.run_id, "failed", {}, f"{type(exc).__name__}: {exc}"))
    try:
        if prom is not None:
            prom.linger(cfg.telemetry.metrics_linger, cfg.telemetry.metrics_hold)
            (run_dir / "endpoint.json").unlink(missing_ok=True)
    finally:
        bus.close()


def execute_run(cfg: RunConfig, run_dir: Path, resume: bool = False,
                identity: RunIdentity | None = None, parallel: Any = None) -> Outcome:
    """Run one experiment into ``run_dir`` and return how it ended.

    ``identity`` is given by a fresh launch that just made it (and named
    ``run_dir`` after it): the directory must not exist yet and is created
    here, after the input checks. Otherwise the identity stored in ``run_dir``
    is used (``--resume``, sweep trials), else a new one (or, resuming an older
    directory without ``identity.json``, the config hash it used as run id).
    On ``resume``, a ``cfg`` whose runtime options differ from the saved
    ``config.yaml`` is written back, so a later plain ``--resume`` behaves the same.

    ``parallel``: rank 0's step policy in a data-parallel run (:mod:`engine.cli.ddp`).

    Bad input raises :class:`~engine.errors.ConfigError` before training starts;
    an unexpected exception is recorded as status ``failed`` (metrics.json and
    every sink see it) and re-raised.
    """
    # Input checks that need the machine (device, port) come before anything is written.
    device = pick_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    stored = None if identity is not None else read_identity(run_dir)  # a bad file is bad input
    prom = _serve_metrics(cfg)
    try:
        # A fresh launch creates its directory exclusively: two launches never share one.
        run_dir.mkdir(parents=True, exist_ok=identity is None)
        saved_path = run_dir / "config.yaml"
        resuming = resume and saved_path.is_file()
        changed = _changed_options(saved_path, cfg) if resuming else {}
        if not resuming or changed:
            dump_yaml(cfg, saved_path)
        if identity is None:
            identity = stored or (legacy_identity(cfg) if resume else new_identity(cfg))
        if stored is None:
            write_identity(run_dir, identity)
    except BaseException:
        if prom is not None:
            prom.close()
        raise
    run_id = identity.run_id
    with run_logging(run_dir):
        if changed:
            log.info("resumed with runtime options changed (saved to config.yaml): %s",
                     ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
        try:
            factory = get_experiment(cfg.experiment).factory
            experiment = factory(cfg, device)
            bus = EventBus(strict=cfg.telemetry.strict_sinks)
            trainer = Trainer(experiment, bus, run_id, run_dir, cfg.to_dict(), cfg.train.checkpoint_every,
                              config_hash=identity.config_hash, rebuild=lambda: factory(cfg, device),
                              parallel=parallel)
            if resume and not trainer.resume():
                log.warning("no checkpoint in %s: starting from the beginning", run_dir)
            _sinks(cfg, run_dir, bus, dict(experiment.phases()), prom)
        except ConfigError:  # bad input found late (data, checkpoint): exit 2, no page
            if prom is not None:  # not attached to a bus yet: free the port here
                prom.close()
            raise
        except Exception as exc:  # a crash before training (a bug, out of memory): a failed run
            log.exception("run failed before training")
            _report_setup_failure(cfg, run_dir, identity, str(device), prom, exc)
            write_report_safely(run_dir, cfg.telemetry.report)
            raise
        except BaseException:
            if prom is not None:
                prom.close()
            raise
        try:
            with stop_on_signals(trainer):
                outcome = trainer.run()
            bus.flush()  # threaded sinks finish RunEnded (MLflow's end of run): a failure there is counted before the linger
        except Exception as exc:
            log.exception("run failed")
            outcome = Outcome("failed", trainer.final_metrics(), f"{type(exc).__name__}: {exc}")
            bus.publish(RunEnded(run_id, "failed", outcome.metrics, outcome.error))
            raise
        finally:
            if prom is not None:
                # Let Prometheus see the final state (e.g. a divergence) before exit.
                prom.linger(cfg.telemetry.metrics_linger, cfg.telemetry.metrics_hold)
                (run_dir / "endpoint.json").unlink(missing_ok=True)
            bus.close()
            write_report_safely(run_dir, cfg.telemetry.report)  # partial results too: failed, diverged, ...
        log.info("run %s ended: %s", run_id, outcome.status)
        return outcome


def _changed_options(saved_path: Path, cfg: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Options of ``cfg`` that differ from ``saved_path`` (on resume only runtime ones can: the CLI checks)."""
    from engine.resume import flat_diff

    return flat_diff(load_yaml(saved_path), cfg)


def console_mode_is_rich(mode: str) -> bool:
    """Whether the console sink will draw a live view (so stderr logs stay quiet)."""
    return mode == "rich" or (mode == "auto" and sys.stderr.isatty())

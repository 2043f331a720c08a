"""Run sweep trials through an executor (subprocesses by default), ``parallel`` at a time.

Each trial gets ``<sweep_dir>/run_<NNN>_<config_hash>/`` with its ``config.yaml``
(metrics port pre-picked, ``auto_port`` on) and ``identity.json`` (its unique
run_id, made here before launch and kept if the directory is run again), and
runs ``trial_command(run_dir)`` with stdout+stderr in ``stdout.log``. When the
trial writes ``endpoint.json`` its endpoint joins the sweep's Prometheus
``file_sd`` file (label ``run`` = the run_id the trial reports) until it exits.
Its ``metrics.json`` (or the exit status) becomes a ``sweep_summary.csv`` row.
Trials come from a :class:`~engine.sweep.source.TrialSource`: a fixed list (a
grid) or an Optuna study asked as slots free up, which may also stop running
trials (pruning) and set their rows' status.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection

from engine.config import dump_yaml, parameters
from engine.identity import RunIdentity, ensure_identity
from engine.sweep.executor import Executor, LocalExecutor, TrialHandle
from engine.sweep.file_sd import TargetsFile
from engine.sweep.grid import Trial
from engine.sweep.source import ListSource, TrialSource
from engine.sweep.summary import METRIC_COLUMNS, SummaryCsv

log = logging.getLogger("engine.sweep")

#: Final trial statuses that are not failures: a diverged trial is a result of
#: its hyper-parameters, an interrupted one was stopped on request, a pruned one
#: by the search's pruner.
OK_STATUSES = frozenset({"finished", "diverged", "interrupted", "pruned"})
_POLL = 0.05


def default_trial_command(run_dir: Path) -> list[str]:
    """``python -m engine trial <run_dir>``: run one trial from its config.yaml."""
    return [sys.executable, "-m", "engine", "trial", str(run_dir)]


@dataclass
class SweepResult:
    """Outcome of :func:`run_sweep`; ``rows`` are summary rows in trial order."""

    sweep_dir: Path
    rows: list[dict[str, Any]]
    failed: int
    interrupted: bool


@dataclass
class _Running:
    trial: Trial
    identity: RunIdentity
    run_dir: Path
    handle: TrialHandle
    started: float
    registered: bool = False
    signalled: int = 0  # how many sweep signals were forwarded to this trial


def run_sweep(
    trials: list[Trial] | TrialSource,
    sweep_dir: Path,
    *,
    sweep_name: str,
    parallel: int = 1,
    file_sd_dir: Path | None = None,
    trial_command: Callable[[Path], list[str]] = default_trial_command,
    env: dict[str, str] | None = None,
    executor: Executor | None = None,
) -> SweepResult:
    """Run the trials of ``trials`` (a list, or a source asked as slots free up) and return their rows.

    ``env`` adds variables to this process's environment for the trials. A
    failed trial does not stop the sweep. SIGINT/SIGTERM (main thread only)
    forwards SIGTERM to running trials, waits for them and starts no new ones;
    a second signal SIGKILLs them. ``executor`` says where trials run
    (default: :class:`~engine.sweep.executor.LocalExecutor`, subprocesses here).
    A :class:`~engine.sweep.source.TrialSource` may stop running trials
    (pruning) through their handles and set the status of their rows.
    """
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    source = ListSource(trials) if isinstance(trials, list) else trials
    summary = SummaryCsv(sweep_dir / "sweep_summary.csv", source.param_keys)
    # One targets file per sweep invocation (its directory name is unique), so
    # two sweeps with the same name never overwrite or delete each other's targets.
    targets = TargetsFile(Path(file_sd_dir) / f"{sweep_dir.name}.json") if file_sd_dir else None
    child_env = _child_env(env, parallel)
    executor = executor or LocalExecutor()
    running: list[_Running] = []
    rows: list[dict[str, Any]] = []
    ports: set[int] = set()  # handed out in this sweep: never twice
    signals = {"count": 0}
    restore = _install_handlers(signals)
    log.info("sweep %s: %d at a time -> %s", sweep_name, max(1, parallel), sweep_dir)
    try:
        while running or not source.exhausted():
            if signals["count"] and not source.exhausted():
                log.warning("sweep %s interrupted: starting no more trials", sweep_name)
                source.stop()
            while len(running) < max(1, parallel) and (trial := source.next_trial()) is not None:
                running.append(_start(trial, sweep_dir, trial_command, child_env, ports, executor))
            if not running:
                break  # a source with nothing to start and nothing running would wait forever
            for r in list(running):
                _stop(r, signals["count"])
                # A trial with its endpoint disabled never writes endpoint.json.
                if targets is not None and not r.registered and r.trial.config.telemetry.metrics_port:
                    _register(r, targets, sweep_name)
                if r.handle.poll() is not None:
                    running.remove(r)
                    row = source.result(r.trial, r.run_dir, _finish(r, targets))
                    summary.append(row)
                    source.commit(r.trial, row)
                    rows.append(row)
                    _log_row(row)
                elif not r.signalled:
                    source.watch(r.trial, r.run_dir, r.handle)
            time.sleep(_POLL)
    finally:
        for r in running:  # only on an unexpected error: leave no orphans
            r.handle.kill()
            r.handle.wait()
        if targets is not None:
            targets.clear()
        executor.close()
        restore()
    rows.sort(key=lambda row: row["trial"])
    failed = sum(row["status"] not in OK_STATUSES for row in rows)
    return SweepResult(sweep_dir, rows, failed, interrupted=bool(signals["count"]))


def _child_env(extra: dict[str, str] | None, parallel: int = 1) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # Share the cores between concurrent trials: oversubscribed OpenMP threads
    # spin-wait on each other and can make every trial several times slower.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, parallel))))
    # `python -m engine` must import this very engine even when the sweep was
    # started through scripts/run.py or from another working directory.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return {**env, **(extra or {})}


def _install_handlers(signals: dict[str, int]) -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, _frame: Any) -> None:
        signals["count"] += 1
        log.warning("received %s: stopping the sweep", signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, prev in old.items():
            signal.signal(sig, prev)

    return restore


def free_port(taken: Collection[int] = ()) -> int:
    """A port free on 127.0.0.1 right now and not in ``taken``.

    Another process may still grab it before the trial binds; the trial's
    ``auto_port`` then moves on to the next free port.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port
    raise RuntimeError("no free port found")


def _start(trial: Trial, sweep_dir: Path, command: Callable[[Path], list[str]],
           env: dict[str, str], ports: set[int], executor: Executor) -> _Running:
    # Named by the config hash (not the run_id), so running the sweep dir again
    # finds the trial's directory, its checkpoint and its identity.
    run_dir = sweep_dir / f"run_{trial.index:03d}_{trial.config_hash}"
    run_dir.mkdir(parents=True, exist_ok=True)
    # Made before launch, so the file_sd ``run`` label is the run_id the trial reports.
    identity = ensure_identity(run_dir, trial.config_hash, legacy=(run_dir / "checkpoint.pt").exists())
    for stale in ("endpoint.json", "metrics.json"):  # left by an earlier attempt
        (run_dir / stale).unlink(missing_ok=True)
    tel = trial.config.telemetry
    if tel.metrics_port != 0:  # 0 = endpoint disabled: keep it so
        port = free_port(ports)
        ports.add(port)
        tel = tel.model_copy(update={"metrics_port": port, "auto_port": True})
    dump_yaml(trial.config.model_copy(update={"telemetry": tel}), run_dir / "config.yaml")
    handle = executor.start(command(run_dir), run_dir, env, run_dir / "stdout.log")
    log.info("trial %03d (%s) started on %s: %s, %s", trial.index, identity.run_id, executor.name,
             handle.describe(), run_dir)
    return _Running(trial, identity, run_dir, handle, time.monotonic())


def _stop(r: _Running, count: int) -> None:
    """Forward the sweep's interrupt: SIGTERM on the first signal, SIGKILL after."""
    if count > r.signalled and r.handle.poll() is None:
        r.handle.send_signal(signal.SIGTERM if count == 1 else signal.SIGKILL)
        r.signalled = count


#: Environment variable naming the host Prometheus should scrape trials on.
ADVERTISE_ENV = "PLASTICITY_METRICS_ADVERTISE_HOST"


def _register(r: _Running, targets: TargetsFile, sweep_name: str) -> None:
    ep = r.handle.endpoint()
    if ep is None:
        return  # not written (or not completely) yet: retry next poll
    host, port = ep
    if host in ("", "0.0.0.0", "::"):
        # A wildcard bind is reached through the address Prometheus can see:
        # the container's service name under compose, loopback otherwise.
        host = os.environ.get(ADVERTISE_ENV) or ("127.0.0.1" if host != "::" else "::1")
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    labels = {"sweep": sweep_name, "run": r.identity.run_id, "trial": f"{r.trial.index:03d}",
              "node": r.handle.node}
    targets.add(r.identity.run_id, f"{host}:{port}", labels)
    r.registered = True
    log.info("trial %03d endpoint %s:%d registered", r.trial.index, host, port)


def _finish(r: _Running, targets: TargetsFile | None) -> dict[str, Any]:
    rc = r.handle.wait()
    if targets is not None:
        targets.remove(r.identity.run_id)
    row: dict[str, Any] = {"trial": r.trial.index, "run_id": r.identity.run_id,
                           "config_hash": r.trial.config_hash, "run_dir": r.run_dir.name,
                           **parameters(r.trial.config), **r.trial.params}
    try:
        data = json.loads((r.run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        data = None
    data = data if isinstance(data, dict) else None
    metrics = (data or {}).get("metrics") or {}
    row.update({k: metrics[k] for k in METRIC_COLUMNS if k in metrics})
    row.setdefault("wall_seconds", round(time.monotonic() - r.started, 3))
    status = str(data.get("status") or "") if data is not None else ""
    if status and status != "running":
        row["status"], row["error"] = status, str(data.get("error") or "")  # type: ignore[union-attr]
    elif data is not None and not status and rc == 0:
        row["status"], row["error"] = "finished", ""
    else:
        # No final status: the process died (or exited) before the trial ended.
        why = f"killed by {_signame(-rc)}" if rc < 0 else f"exit code {rc}"
        why += ", no metrics.json" if data is None else f", last status {status or 'missing'!r}"
        last = _last_line(r.run_dir / "stdout.log")
        row["status"], row["error"] = "failed", why + (f"; last output: {last}" if last else "")
    return row


def _log_row(row: dict[str, Any]) -> None:
    log.log(logging.INFO if row["status"] in OK_STATUSES else logging.WARNING, "trial %03d (%s) %s%s",
            row["trial"], row["run_id"], row["status"], f": {row['error']}" if row["error"] else "")


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 4096))
            lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return ""
    return next((ln for ln in reversed(lines) if ln), "")[:300]


def _signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"

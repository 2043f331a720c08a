"""Where sweep trials run: the executor contract and the local (subprocess) executor.

The sweep runner decides *what* runs (trials, ports, file_sd, summary rows);
an executor decides *where*: :meth:`Executor.start` launches one trial's
command and returns a :class:`TrialHandle` the runner polls, signals and
reaps exactly like a :class:`subprocess.Popen`. The local executor runs the
command as a child process; other executors (e.g. Ray) run it elsewhere and
make the run directory's files appear under the sweep directory.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Callable, Protocol, runtime_checkable


@runtime_checkable
class TrialHandle(Protocol):
    """One launched trial, polled by the runner's loop (never blocks in ``poll``)."""

    #: Short name of where the trial runs (the ``node`` file_sd label).
    node: str

    def poll(self) -> int | None:
        """The exit code once the trial ended (negative = killed by that signal), else None."""

    def send_signal(self, sig: int) -> None:
        """Deliver ``sig`` (SIGTERM to stop cleanly, SIGKILL to stop now) to the trial."""

    def kill(self) -> None:
        """Stop the trial at once (used only when the sweep itself fails)."""

    def wait(self, timeout: float | None = None) -> int:
        """Block until the trial ended and return its exit code."""

    def endpoint(self) -> tuple[str, int] | None:
        """``(host, port)`` the trial's metrics endpoint serves on, once it is known."""

    def describe(self) -> str:
        """Where it runs, for log lines (e.g. ``pid 1234``)."""


class Executor(Protocol):
    """Launches trials; one instance per sweep invocation."""

    name: str

    def start(self, cmd: list[str], run_dir: Path, env: dict[str, str], log_path: Path) -> TrialHandle:
        """Run ``cmd`` for the trial in ``run_dir``, its stdout+stderr to ``log_path``."""

    def close(self) -> None:
        """Release what the executor holds (called once, after the last trial ended)."""


#: Executor names accepted by :func:`make_executor` (and ``--executor``).
EXECUTORS = ("local", "ray")
#: Set by executors that run a trial on another machine: the ``trial`` command
#: then binds its metrics endpoint on this address instead of the config's
#: (loopback is not reachable from the Prometheus of a multi-node cluster).
METRICS_HOST_ENV = "PLASTICITY_METRICS_HOST"


def make_executor(name: str, *, ray_address: str | None = None, trial_cpus: float = 1.0,
                  trial_gpus: float = 0.0) -> Executor:
    """The executor called ``name``; a :class:`~engine.errors.ConfigError` lists the valid ones.

    ``ray_address``, ``trial_cpus`` and ``trial_gpus`` are for ``ray`` only;
    giving them to ``local`` is an error rather than silently ignored.
    """
    from engine.errors import ConfigError

    if name == "ray":
        from engine.sweep.ray_executor import RayExecutor  # imports ray: optional dependency

        return RayExecutor(address=ray_address, trial_cpus=trial_cpus, trial_gpus=trial_gpus)
    if name != "local":
        raise ConfigError("executor", name, f"one of: {', '.join(EXECUTORS)}")
    for key, value, default in (("ray_address", ray_address, None), ("trial_cpus", trial_cpus, 1.0),
                                ("trial_gpus", trial_gpus, 0.0)):
        if value != default:
            raise ConfigError(key, value, "only with --executor ray")
    return LocalExecutor()


def read_endpoint(run_dir: Path) -> tuple[str, int] | None:
    """``(host, port)`` from ``run_dir/endpoint.json``; None while it is missing or partial."""
    try:
        ep = json.loads((Path(run_dir) / "endpoint.json").read_text())
        return str(ep["host"]), int(ep["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class LocalHandle:
    """A trial running as a child process of the sweep (its own session)."""

    node = "local"

    def __init__(self, proc: subprocess.Popen[bytes], log_fh: IO[bytes], run_dir: Path) -> None:
        self._proc, self._log_fh, self._run_dir = proc, log_fh, Path(run_dir)

    @property
    def pid(self) -> int:
        """The trial process's PID."""
        return self._proc.pid

    def poll(self) -> int | None:
        rc = self._proc.poll()
        if rc is not None and not self._log_fh.closed:
            self._log_fh.close()
        return rc

    def send_signal(self, sig: int) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(sig)

    def kill(self) -> None:
        self._proc.kill()

    def wait(self, timeout: float | None = None) -> int:
        rc = self._proc.wait(timeout)
        self._log_fh.close()
        return rc

    def endpoint(self) -> tuple[str, int] | None:
        return read_endpoint(self._run_dir)

    def describe(self) -> str:
        return f"pid {self._proc.pid}"


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def stop_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the trial get SIGTERM when the sweep process dies.

    A coordinator killed by SIGKILL cannot forward a signal; without this its
    trials would run on unwatched (no file_sd entry, no summary row) and a
    ``--resume`` of the sweep would start them a second time in the same
    directory. With it they end ``interrupted`` and keep their checkpoints,
    which the resume continues. Linux only; elsewhere trials outlive the sweep.
    """
    if _LIBC is None:
        return None
    libc = _LIBC

    def arm() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the sweep died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


class LocalExecutor:
    """Run each trial as a subprocess on this machine."""

    name = "local"

    def start(self, cmd: list[str], run_dir: Path, env: dict[str, str], log_path: Path) -> LocalHandle:
        log_fh = open(log_path, "wb")
        # A session of its own: a terminal Ctrl-C reaches only the sweep, which
        # forwards SIGTERM once, instead of every trial getting SIGINT too.
        try:
            proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                    preexec_fn=stop_with_parent(os.getpid()))
        except BaseException:
            log_fh.close()
            raise
        return LocalHandle(proc, log_fh, run_dir)

    def close(self) -> None:
        """Nothing to release: every child was reaped by the runner."""

"""The node side of the Ray executor: a Ray actor that runs one sweep trial's process.

Imported by Ray workers (through :mod:`engine.sweep.ray_executor`, which wraps
:class:`TrialActor` with ``ray.remote``); it needs only the standard library
and ``ray`` on the node, plus the engine the trial itself runs.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any

from engine.sweep.executor import METRICS_HOST_ENV, stop_with_parent, read_endpoint


def pack_dir(path: Path) -> bytes:
    """``path``'s files as an uncompressed tar archive (names relative to ``path``)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(path), arcname=".")
    return buf.getvalue()


def unpack_dir(data: bytes, path: Path) -> None:
    """Extract :func:`pack_dir` output into ``path`` (existing files are replaced)."""
    path.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(str(path), filter="data")  # no absolute paths, links out or devices


class TrialActor:
    """Holds one trial's process on a Ray node (wrapped with ``ray.remote`` by the executor).

    It runs threaded: :meth:`run` blocks until the process ends while
    :meth:`info` and :meth:`send_signal` answer the coordinator meanwhile.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._stop: int = 0  # a signal that arrived before the process started
        self._node: dict[str, Any] = {}

    def run(self, cmd: list[str], run_dir: str, env: dict[str, str], log_name: str, probe: dict[str, bytes],
            payload: list[Any], own_python: bool) -> tuple[int, bytes | None]:
        """Run the trial; ``(exit code, tar of the run dir or None when it is shared)``.

        ``own_python``: ``cmd[0]`` is the coordinator's interpreter, to be
        replaced by this node's (the one running Ray, with the engine installed).
        """
        import ray

        ip = ray.util.get_node_ip_address()
        with self._lock:
            self._node = {"node_id": ray.get_runtime_context().get_node_id(), "ip": ip,
                          "hostname": socket.gethostname()}
        shared = bool(probe) and all(_read(Path(run_dir) / name) == data for name, data in probe.items())
        scratch = None if shared else Path(tempfile.mkdtemp(prefix="plasticity-trial-"))
        local = Path(run_dir) if scratch is None else scratch / Path(run_dir).name
        try:
            if scratch is not None:
                # ``payload`` wraps the ref so Ray fetches the archive only here, when needed.
                unpack_dir(ray.get(payload[0]), local)
            # The node's own interpreter; the run dir as this node sees it.
            argv = [sys.executable if i == 0 and own_python else (str(local) if a == run_dir else a)
                    for i, a in enumerate(cmd)]
            child_env = {**os.environ, **env, METRICS_HOST_ENV: ip}
            with open(local / log_name, "wb") as fh, self._lock:
                if self._stop:
                    return -self._stop, None
                # Own session: signals for the trial never hit the Ray worker. Parent-death
                # signal: a worker killed outright (OOM killer, lost driver) takes its trial
                # along instead of leaving it running unwatched, its port taken. This thread
                # (which the signal is tied to) lives until the trial ends: it waits below.
                self._proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              env=child_env, cwd=str(local), start_new_session=True,
                                              preexec_fn=stop_with_parent(os.getpid()))
                self._dir = local
            rc = self._proc.wait()
            return rc, None if scratch is None else pack_dir(local)
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    def info(self) -> dict[str, Any]:
        """Node id, IP and hostname, the trial's pid and ``endpoint`` once it serves one."""
        with self._lock:
            out = dict(self._node)
            if self._proc is not None:
                out["pid"] = self._proc.pid
            if self._dir is not None:
                out["endpoint"] = read_endpoint(self._dir)
        return out

    def send_signal(self, sig: int) -> None:
        """Deliver ``sig`` to the trial process (or keep it from starting)."""
        with self._lock:
            if self._proc is None:
                self._stop = self._stop or sig
            elif self._proc.poll() is None:
                self._proc.send_signal(sig)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None

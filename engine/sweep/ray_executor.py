"""Run sweep trials on a Ray cluster: one Ray actor per trial holds the trial's process.

The coordinator (the ``sweep`` command) keeps doing what it does with local
trials: it writes each trial's run directory, registers its endpoint in the
sweep's Prometheus ``file_sd`` file, polls, forwards signals and reads
``metrics.json``. :class:`RayExecutor` only changes *where* the trial process
runs: a :class:`TrialActor`, scheduled with the trial's resources
(``trial_cpus``/``trial_gpus``), starts ``python -m engine trial`` on its node
with the metrics endpoint bound on the node's address, and answers the
coordinator's questions (endpoint, node) and signals while it runs.

Results: when the node sees the coordinator's run directory (a shared file
system: same path, same ``config.yaml`` and ``identity.json``) the trial writes
into it directly. Otherwise the actor unpacks the run directory shipped by the
coordinator into a scratch directory, runs the trial there and returns the
whole directory as a tar archive, which the coordinator unpacks into the run
directory: either way the sweep directory ends up as with the local executor.

``ray`` is imported only here; it is an optional dependency.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.sweep.ray_trial import TrialActor, pack_dir, unpack_dir

log = logging.getLogger("engine.sweep")

INSTALL_HINT = "pip install -r requirements-ray.txt"
#: ``1`` = always ship run directories back, even when the node sees them (a slow shared FS).
GATHER_ENV = "PLASTICITY_RAY_GATHER"
#: Files that identify a trial's run directory: equal bytes on the node = a shared file system.
_PROBE_FILES = ("config.yaml", "identity.json")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("executor", "ray", f"needs the optional 'ray' package ({exc}): {INSTALL_HINT}") from exc
    return ray


def _node_names(ray: Any) -> dict[str, str]:
    """Node id -> the node's name (``ray start --node-name``, by default its IP)."""
    return {n["NodeID"]: str(n.get("NodeName") or n.get("NodeManagerAddress") or "") for n in ray.nodes()}


def _check_reachable(address: str) -> None:
    """Fail fast on a ``host:port`` nobody listens on (``ray.init`` retries it for minutes)."""
    if "://" in address or ":" not in address:
        return  # ray://... (Ray client), "auto", "local": left to ray.init
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise ConfigError("ray_address", address, f"the host:port of a running Ray cluster ({exc})") from None


class RayHandle:
    """The coordinator's side of one trial running in a :class:`TrialActor`."""

    def __init__(self, ray: Any, actor: Any, ref: Any, run_dir: Path, log_path: Path, names: dict[str, str]) -> None:
        self._ray, self._actor, self._ref = ray, actor, ref
        self._run_dir, self._log_path, self._names = Path(run_dir), Path(log_path), names
        self._rc: int | None = None
        self._info: dict[str, Any] = {}
        self._info_ref: Any = None
        self.node = "pending"

    def poll(self) -> int | None:
        if self._rc is None and self._ray.wait([self._ref], timeout=0)[0]:
            self._collect()
        return self._rc

    def wait(self, timeout: float | None = None) -> int:
        if self._rc is None:
            if not self._ray.wait([self._ref], timeout=timeout)[0]:
                raise subprocess.TimeoutExpired(f"ray trial {self._run_dir.name}", timeout or 0)
            self._collect()
        assert self._rc is not None
        return self._rc

    def send_signal(self, sig: int) -> None:
        if self._rc is None:
            self._actor.send_signal.remote(int(sig))

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
        # An actor still waiting for resources never gets the signal: remove it.
        if self._rc is None and not self._ray.wait([self._ref], timeout=5)[0]:
            self._ray.kill(self._actor)

    def endpoint(self) -> tuple[str, int] | None:
        self._refresh()
        ep = self._info.get("endpoint")
        return (str(ep[0]), int(ep[1])) if ep else None

    def describe(self) -> str:
        self._refresh()
        where = f"node {self.node}" + (f" pid {self._info['pid']}" if "pid" in self._info else "")
        return f"ray actor ({where})"

    def _refresh(self) -> None:
        """Pick up the actor's latest :meth:`TrialActor.info` without blocking; ask again."""
        if self._rc is not None or self._info.get("endpoint"):
            return
        if self._info_ref is not None and self._ray.wait([self._info_ref], timeout=0)[0]:
            try:
                self._info = self._ray.get(self._info_ref)
            except self._ray.exceptions.RayError:
                pass  # the actor is gone: poll() reports it
            self._info_ref = None
            node_id = self._info.get("node_id")
            if node_id:
                if node_id not in self._names:  # a node that joined after the sweep started
                    self._names.update(_node_names(self._ray))
                self.node = self._names.get(node_id) or self._info.get("ip") or node_id[:8]
        if self._info_ref is None:
            self._info_ref = self._actor.info.remote()

    def _collect(self) -> None:
        try:
            rc, archive = self._ray.get(self._ref)
        except self._ray.exceptions.RayError as exc:
            # Nothing came back: the actor, its worker or its node died (as if SIGKILLed),
            # or the launch itself raised. Say why in the trial's log, whose last line
            # the sweep summary quotes.
            died = not isinstance(exc, self._ray.exceptions.RayTaskError)
            rc, archive = (-signal.SIGKILL if died else 1), None
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1 if not died else 0][:300]
            what = "lost" if died else "could not run"
            log.warning("trial %s: Ray actor %s on node %s: %s", self._run_dir.name, what, self.node, reason)
            with open(self._log_path, "a", encoding="utf-8") as fh:
                fh.write(f"\nray: trial {what} on node {self.node}: {type(exc).__name__}: {reason}\n")
        if archive is not None:
            unpack_dir(archive, self._run_dir)
        self._rc = int(rc)
        self._ray.kill(self._actor)  # frees the trial's CPUs/GPUs at once


class RayExecutor:
    """Launch each trial as a :class:`TrialActor` with ``trial_cpus``/``trial_gpus`` on a Ray cluster.

    ``address`` (else ``$RAY_ADDRESS``) names a running cluster; without one a
    local Ray is started for the sweep and shut down by :meth:`close`.
    ``gather`` (default: ``$PLASTICITY_RAY_GATHER == "1"``) runs every trial in
    a node-local scratch directory and ships it back even when the node sees
    the sweep directory; otherwise that happens only where it does not. The
    constructor checks the input only (a bad sweep file then costs no Ray
    start); the first :meth:`start` connects, and the next one after a
    :meth:`close` (the CLI runs several sweep files with one executor) again.
    """

    name = "ray"

    def __init__(self, address: str | None = None, trial_cpus: float = 1.0, trial_gpus: float = 0.0,
                 gather: bool | None = None) -> None:
        self._ray = _import_ray()
        for key, value in (("trial_cpus", trial_cpus), ("trial_gpus", trial_gpus)):
            if not value >= 0:
                raise ConfigError(key, value, "a number of CPUs/GPUs >= 0")
        self.trial_cpus, self.trial_gpus = float(trial_cpus), float(trial_gpus)
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.gather = os.environ.get(GATHER_ENV, "") == "1" if gather is None else gather
        if self.address is None and self.trial_cpus > (os.cpu_count() or 1):
            # A local Ray never grows: such a trial would wait forever.
            raise ConfigError("trial_cpus", trial_cpus, f"at most this machine's {os.cpu_count()} CPUs")
        if self.address is not None:
            _check_reachable(self.address)
        self._owns = False
        self._cls: Any = None
        self._names: dict[str, str] = {}

    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized() and self._cls is not None:
            return  # connected by an earlier start()
        self._owns = not ray.is_initialized()  # a caller's own ray.init() stays the caller's
        # ray.init replaces this process's SIGTERM handler (with sys.exit): keep the
        # sweep's, which stops the trials cleanly (SIGTERM to each, then wait for them).
        main = threading.current_thread() is threading.main_thread()
        saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
        try:
            self._init()
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        total = ray.cluster_resources()
        for key, want in (("CPU", self.trial_cpus), ("GPU", self.trial_gpus)):
            if want > total.get(key, 0.0):
                if self.address is None:
                    self.close()
                    raise ConfigError(f"trial_{key.lower()}s", want, f"at most the {total.get(key, 0.0):g} "
                                      f"{key}s of the local Ray")
                log.warning("trials need %g %s but the cluster has %g now: they wait for nodes to join",
                            want, key, total.get(key, 0.0))
        self._names = _node_names(ray)
        # The actor's worker imports this engine the way the trial does: from the same path
        # (every node runs the same image or checkout), whatever directory Ray started in.
        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        self._cls = ray.remote(TrialActor).options(num_cpus=self.trial_cpus, num_gpus=self.trial_gpus,
                                                   max_concurrency=4, max_restarts=0,
                                                   runtime_env={"env_vars": {"PYTHONPATH": path}})

    def _init(self) -> None:
        ray, quiet = self._ray, {"log_to_driver": False, "logging_level": logging.WARNING}
        if self._owns and self.address is None:
            # Light: no dashboard, a small object store (run dirs move only without a shared FS).
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, object_store_memory=200 * 2**20,
                     **quiet)
            log.info("started a local Ray (%g CPUs) for the sweep", ray.cluster_resources().get("CPU", 0))
        elif self._owns:
            ray.init(address=self.address, **quiet)
            log.info("connected to the Ray cluster at %s: %s", self.address, ray.cluster_resources())

    def start(self, cmd: list[str], run_dir: Path, env: dict[str, str], log_path: Path) -> RayHandle:
        # Absolute: the node's working directory is not ours.
        given, run_dir = str(run_dir), Path(run_dir).resolve()
        cmd = [str(run_dir) if str(c) == given else str(c) for c in cmd]
        self._connect()
        ray = self._ray
        # No probe = the node never takes the run dir for shared: it always gathers.
        probe = {} if self.gather else {name: (run_dir / name).read_bytes() for name in _PROBE_FILES
                                        if (run_dir / name).is_file()}
        # Only what the runner adds to this process's environment makes sense on another
        # node (paths, interpreter and the like are the node's), plus MLflow's settings.
        extra = {k: v for k, v in env.items() if os.environ.get(k) != v or k.startswith("MLFLOW_")}
        extra["OMP_NUM_THREADS"] = str(max(1, int(self.trial_cpus)))  # the trial's share of its node
        log_name = os.path.relpath(Path(log_path).resolve(), run_dir)
        actor = self._cls.remote()
        ref = actor.run.remote(cmd, str(run_dir), extra, log_name, probe, [ray.put(pack_dir(run_dir))],
                               bool(cmd) and cmd[0] == sys.executable)
        return RayHandle(ray, actor, ref, run_dir, Path(log_path), self._names)

    def close(self) -> None:
        """Disconnect from the cluster (stopping the local Ray this executor started)."""
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._cls, self._owns = None, False

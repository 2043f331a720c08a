"""The local monitoring stack: the repo's Prometheus and Alertmanager configs, on loopback.

:func:`start_local` runs the real binaries (Debian packages ``prometheus`` and
``prometheus-alertmanager``) as detached child processes on 127.0.0.1 and
records them in ``<workdir>/stack.json``; :func:`stop_local` stops exactly the
processes recorded there, after checking each PID still is the process it
started.

This module is also the stack's public interface: it re-exports the config
rendering (:mod:`monitoring.stack_config`), the service record and checks both
launchers share (:mod:`monitoring.stack_services`) and the Docker launcher
(:mod:`monitoring.stack_docker`, the compose file's images through the Docker
SDK when a Docker engine is reachable).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from monitoring.stack_config import (
    ALERTMANAGER_YML,
    COMPOSE_SLACK_URL_FILE,
    ENGINE_HOSTS,
    PROMETHEUS_YML,
    REPO,
    RenderedConfigs,
    StackError,
    render_configs,
    seconds,
)
from monitoring.stack_docker import (
    _container_running,
    compose_images,
    docker_client,
    start_docker,
    stop_docker,
)
from monitoring.stack_services import (
    BINARIES,
    DISABLED_SLACK_URL,
    INSTALL_HINT,
    STATE_FILE,
    Service,
    _gone,
    _plan,
    _proc_identity,
    _wait_ready,
    find_binary,
    is_ours,
    port_free,
    read_state,
    ready,
    write_state,
)

__all__ = [
    "ALERTMANAGER_YML", "BINARIES", "COMPOSE_SLACK_URL_FILE", "DISABLED_SLACK_URL", "ENGINE_HOSTS", "INSTALL_HINT",
    "PROMETHEUS_YML", "REPO", "STATE_FILE", "RenderedConfigs", "Service", "StackError", "compose_images",
    "docker_client", "find_binary", "is_ours", "port_free", "read_state", "ready", "render_configs", "seconds",
    "start_docker", "start_local", "status", "stop_docker", "stop_local", "write_state",
]

log = logging.getLogger(__name__)


def _spawn(name: str, cmd: list[str], port: int, workdir: Path) -> Service:
    logfile = workdir / f"{name}.log"
    with open(logfile, "ab") as fh:
        # A new session: the stack outlives `stack up` and a Ctrl-C in its terminal.
        popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                 cwd=workdir, start_new_session=True)
    ident = _proc_identity(popen.pid)
    ticks = ident[0] if ident else 0
    return Service(name, port, f"http://127.0.0.1:{port}", pid=popen.pid, start_ticks=ticks,
                   cmdline=tuple(cmd), started_at=time.time(), log=str(logfile))


def start_local(workdir: Path, *, prometheus_port: int = 9090, alertmanager_port: int = 9093,
                engine_targets: list[str] | None = None, file_sd_dir: Path | None = None,
                slack_url_file: Path | None = None, scrape_interval: str | None = None,
                evaluation_interval: str | None = None, group_wait: str | None = None,
                group_interval: str | None = None, resend_delay: str | None = None,
                ready_timeout: float = 30.0) -> list[Service]:
    """Start Prometheus and Alertmanager on loopback with the rendered configs; wait until ready.

    Timings left at None keep the shipped values (``resend_delay``: Prometheus's
    default 1m). Returns the started services (also recorded in
    ``<workdir>/stack.json``). On any failure, whatever was started is stopped
    again and the error raised (:class:`StackError` for bad input or a failed start).
    """
    workdir, cmds, _ = _plan(workdir, True, prometheus_port, alertmanager_port, engine_targets, file_sd_dir,
                          slack_url_file, resend_delay, scrape_interval=scrape_interval,
                          evaluation_interval=evaluation_interval, group_wait=group_wait, group_interval=group_interval)
    services: list[Service] = []
    try:  # Alertmanager first, so Prometheus can deliver its very first alerts
        services.append(_spawn("alertmanager", cmds["alertmanager"], alertmanager_port, workdir))
        services.append(_spawn("prometheus", cmds["prometheus"], prometheus_port, workdir))
        write_state(workdir, "local", services)
        _wait_ready(services, ready_timeout)
    except BaseException:
        _terminate(services)
        (workdir / STATE_FILE).unlink(missing_ok=True)
        raise
    return services


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # it ended between the identity check and now


def _terminate(services: list[Service], grace: float = 10.0) -> list[Service]:
    """SIGTERM each service that still is ours, SIGKILL it after ``grace`` s; returns those signalled."""
    ours = [s for s in services if is_ours(s)]
    for svc in ours:
        _signal(svc.pid, signal.SIGTERM)
    deadline, killed = time.monotonic() + grace, False
    while any(not _gone(s.pid) for s in ours):
        if time.monotonic() > deadline:
            if killed:
                log.error("still running after SIGKILL: %s", [s.pid for s in ours if not _gone(s.pid)])
                break
            for svc in ours:
                if not _gone(svc.pid):
                    log.warning("%s (pid %d) ignored SIGTERM for %.0fs: killing it", svc.name, svc.pid, grace)
                    _signal(svc.pid, signal.SIGKILL)
            deadline, killed = time.monotonic() + grace, True
        time.sleep(0.05)
    return ours


def stop_local(workdir: Path) -> list[Service]:
    """Stop exactly the processes recorded in ``<workdir>/stack.json``; returns those stopped.

    A recorded PID whose start time or command line no longer match (the
    process ended and the PID was reused) is left alone.
    """
    state = read_state(workdir)
    if state is None:
        return []
    mode, services = state
    if mode != "local":
        return stop_docker(workdir)
    for svc in services:
        if not is_ours(svc):
            log.info("%s (pid %d) is no longer running: nothing to stop", svc.name, svc.pid)
    stopped = _terminate(services)
    (Path(workdir) / STATE_FILE).unlink(missing_ok=True)
    return stopped


def status(workdir: Path) -> list[tuple[Service, bool, bool]]:
    """(service, running, ready) for each service recorded in ``<workdir>/stack.json``."""
    state = read_state(workdir)
    if state is None:
        return []
    mode, services = state
    client = docker_client() if mode == "docker" else None
    out = []
    for svc in services:
        if mode == "docker":
            running = client is not None and _container_running(client, svc.container)
        else:
            running = is_ours(svc)
        out.append((svc, running, running and ready(svc.url)))
    return out

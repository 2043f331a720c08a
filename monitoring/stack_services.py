"""The services of a loopback stack, as both launchers start, record and check them.

Shared by :mod:`monitoring.stack` (local processes) and
:mod:`monitoring.stack_docker` (containers): the checks made before anything
starts and the command lines (:func:`_plan`), the ``<workdir>/stack.json``
record of what was started (:func:`write_state`, :func:`read_state`), whether
a recorded PID still is the process the stack started (:func:`is_ours`), and
waiting until every service answers ``/-/ready`` (:func:`_wait_ready`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from monitoring.stack_config import (
    REPO,
    RenderedConfigs,
    StackError,
    render_configs,
    seconds,
)

log = logging.getLogger("monitoring.stack")  # one logger name for the whole stack, as users see it

STATE_FILE = "stack.json"
#: Binary names to look for, Debian's first (its Alertmanager is ``prometheus-alertmanager``).
BINARIES = {"prometheus": ("prometheus",), "alertmanager": ("prometheus-alertmanager", "alertmanager")}
INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager"
#: Slack URL used when no webhook file is given: a closed loopback port, so
#: notifications fail fast and are logged in alertmanager.log, never sent anywhere.
DISABLED_SLACK_URL = "http://127.0.0.1:9/slack-webhook-not-configured"


@dataclass
class Service:
    """One process (or container) of a running stack, as recorded in ``stack.json``."""

    name: str
    port: int
    url: str
    pid: int = 0  # local processes
    start_ticks: int = 0  # /proc/<pid>/stat starttime: tells a reused PID apart
    cmdline: tuple[str, ...] = ()
    started_at: float = 0.0  # unix time, for humans
    log: str = ""
    container: str = ""  # docker mode


def find_binary(service: str) -> str:
    """Path of ``service``'s binary, or :class:`StackError` with the install hint."""
    for name in BINARIES[service]:
        if path := shutil.which(name):
            return path
    raise StackError(f"{BINARIES[service][0]} not found on PATH: install it with `{INSTALL_HINT}`")


def port_free(port: int) -> bool:
    """Whether 127.0.0.1:``port`` can be bound right now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _proc_identity(pid: int) -> tuple[int, tuple[str, ...]] | None:
    """(start ticks, cmdline) of a live, non-zombie ``pid``; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces and ')'
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19]), tuple(a.decode() for a in cmdline.split(b"\0") if a)


def _gone(pid: int) -> bool:
    try:  # reap it if it is our own child (in-process use), else ask /proc
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    return _proc_identity(pid) is None


def is_ours(svc: Service) -> bool:
    """Whether ``svc.pid`` still is the process the stack started (not a reused PID)."""
    ident = _proc_identity(svc.pid) if svc.pid > 0 else None
    return ident == (svc.start_ticks, tuple(svc.cmdline))


def ready(url: str, timeout: float = 1.0) -> bool:
    """Whether ``url/-/ready`` answers 200."""
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _log_tail(path: str) -> str:
    lines = Path(path).read_text(errors="replace").strip().splitlines() if Path(path).exists() else []
    return lines[-1][:300] if lines else "(no output)"


def _wait_ready(services: list[Service], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for svc in services:
        while not ready(svc.url):
            if svc.pid and _gone(svc.pid):
                raise StackError(f"{svc.name} exited during startup: {_log_tail(svc.log)} (see {svc.log})")
            if time.monotonic() > deadline:
                raise StackError(f"{svc.name} not ready at {svc.url}/-/ready after {timeout:.0f}s (see {svc.log})")
            time.sleep(0.1)


def write_state(workdir: Path, mode: str, services: list[Service]) -> Path:
    """Record a started stack in ``<workdir>/stack.json``."""
    path = Path(workdir) / STATE_FILE
    path.write_text(json.dumps({"mode": mode, "services": [asdict(s) for s in services]}, indent=2) + "\n")
    return path


def read_state(workdir: Path) -> tuple[str, list[Service]] | None:
    """(mode, services) from ``<workdir>/stack.json``, or None when no stack was started there."""
    path = Path(workdir) / STATE_FILE
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    return doc["mode"], [Service(**{**s, "cmdline": tuple(s["cmdline"])}) for s in doc["services"]]


def _prepare(workdir: Path, prometheus_port: int, alertmanager_port: int, slack_url_file: Path | None,
             binaries: tuple[str, ...] = ()) -> tuple[Path, Path, dict[str, list[str]]]:
    """Check everything before anything is written; then the work dir, the Slack URL file and the binaries."""
    workdir = Path(workdir).resolve()
    state = read_state(workdir)
    if state and any(is_ours(s) or s.container for s in state[1]):
        raise StackError(f"a stack is already running from {workdir}: run `stack down --workdir {workdir}` first")
    for flag, port in (("--prometheus_port", prometheus_port), ("--alertmanager_port", alertmanager_port)):
        if not port_free(port):
            raise StackError(f"port {port} on 127.0.0.1 is in use: choose another with {flag}")
    if slack_url_file is not None and not Path(slack_url_file).is_file():
        raise StackError(f"Slack webhook URL file {slack_url_file} does not exist")
    paths = {name: [find_binary(name)] for name in binaries}
    workdir.mkdir(parents=True, exist_ok=True)
    if slack_url_file is None:
        log.warning("no Slack webhook URL file given: notifications fail and are logged in %s",
                    workdir / "alertmanager.log")
        slack_url_file = workdir / "slack_url.disabled"
        slack_url_file.write_text(DISABLED_SLACK_URL)
    return workdir, Path(slack_url_file).resolve(), paths


def _commands(workdir: Path, cfg: RenderedConfigs, prometheus_port: int, alertmanager_port: int,
              resend_delay: str | None, prefix: dict[str, list[str]]) -> dict[str, list[str]]:
    """Command lines of both services; ``prefix`` holds each binary (local) or nothing (docker)."""
    am = [*prefix.get("alertmanager", []), f"--config.file={cfg.alertmanager}", f"--storage.path={workdir / 'alertmanager-data'}",
          f"--web.listen-address=127.0.0.1:{alertmanager_port}", "--cluster.listen-address=",
          f"--web.external-url=http://127.0.0.1:{alertmanager_port}/"]
    prom = [*prefix.get("prometheus", []), f"--config.file={cfg.prometheus}", f"--storage.tsdb.path={workdir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}", "--web.enable-lifecycle",
            f"--web.external-url=http://127.0.0.1:{prometheus_port}/"]
    if resend_delay:
        prom.append(f"--rules.alert.resend-delay={resend_delay}")
    return {"alertmanager": am, "prometheus": prom}


def _plan(workdir: Path, local: bool, prometheus_port: int, alertmanager_port: int, engine_targets: list[str] | None,
          file_sd_dir: Path | None, slack_url_file: Path | None, resend_delay: str | None,
          **timing: str | None) -> tuple[Path, dict[str, list[str]], set[Path]]:
    """Check the input and render the configs.

    Returns the work dir, both services' command lines and the directories they read.
    """
    for value in (resend_delay, *timing.values()):
        if value:
            seconds(value)
    workdir, slack, binaries = _prepare(workdir, prometheus_port, alertmanager_port, slack_url_file,
                                        tuple(BINARIES) if local else ())
    file_sd = Path(file_sd_dir or workdir / "file_sd").resolve()
    file_sd.mkdir(parents=True, exist_ok=True)
    cfg = render_configs(workdir, prometheus_port=prometheus_port, alertmanager_port=alertmanager_port,
                         engine_targets=engine_targets or ["127.0.0.1:8000"], file_sd_dir=file_sd,
                         slack_url_file=slack, **timing)
    reads = {workdir, file_sd, slack.parent, REPO / "prometheus", REPO / "alertmanager"}
    return workdir, _commands(workdir, cfg, prometheus_port, alertmanager_port, resend_delay, binaries), reads

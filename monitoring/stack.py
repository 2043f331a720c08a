"""The local monitoring stack: the repo's Prometheus and Alertmanager configs, on loopback.

:func:`render_configs` reads ``prometheus/prometheus.yml`` and
``alertmanager/alertmanager.yml`` (the files ``docker compose`` mounts) and
writes copies into a work dir in which only addresses, file paths and timing
values differ: rules, routes, receivers and inhibitions stay byte-for-byte the
shipped ones, so what the tests exercise is what ships.

:func:`start_local` runs the real binaries (Debian packages ``prometheus`` and
``prometheus-alertmanager``) as detached child processes on 127.0.0.1 and
records them in ``<workdir>/stack.json``; :func:`stop_local` stops exactly the
processes recorded there, after checking each PID still is the process it
started. :func:`start_docker` does the same with the compose file's images
through the Docker SDK when a Docker engine is reachable.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_YML = REPO / "prometheus" / "prometheus.yml"
ALERTMANAGER_YML = REPO / "alertmanager" / "alertmanager.yml"
STATE_FILE = "stack.json"
#: The Slack webhook secret file ``docker compose`` reads by default (never committed).
COMPOSE_SLACK_URL_FILE = REPO / "secrets" / "slack_webhook_url"
#: Binary names to look for, Debian's first (its Alertmanager is ``prometheus-alertmanager``).
BINARIES = {"prometheus": ("prometheus",), "alertmanager": ("prometheus-alertmanager", "alertmanager")}
INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager"
#: Slack URL used when no webhook file is given: a closed loopback port, so
#: notifications fail fast and are logged in alertmanager.log, never sent anywhere.
DISABLED_SLACK_URL = "http://127.0.0.1:9/slack-webhook-not-configured"
#: Compose service names that are the engine (scraped as a static target).
ENGINE_HOSTS = ("engine",)
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


class StackError(RuntimeError):
    """The stack cannot start or stop; the message is one line for the user."""


@dataclass(frozen=True)
class RenderedConfigs:
    """Paths of the loopback configs written by :func:`render_configs`."""

    prometheus: Path
    alertmanager: Path


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


def seconds(duration: str) -> float:
    """A Prometheus duration (``1m30s``, ``500ms``) in seconds."""
    if not _DURATION.match(duration):
        raise StackError(f"invalid duration {duration!r} (use e.g. 1s, 500ms, 1m30s)")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration))


def _under(base: Path, entry: str, anchor: str) -> str:
    """``entry`` re-rooted under ``base``: the part after its last ``anchor`` dir, else its name."""
    parts = PurePosixPath(entry).parts
    tail = parts[len(parts) - parts[::-1].index(anchor):] if anchor in parts[:-1] else parts[-1:]
    return str(base.joinpath(*tail))


def _with_timeout(cfg: dict[str, Any], interval: str) -> None:
    cfg["scrape_interval"] = interval
    if "scrape_timeout" in cfg and seconds(str(cfg["scrape_timeout"])) > seconds(interval):
        cfg["scrape_timeout"] = interval  # Prometheus rejects a timeout longer than the interval


def _local_prometheus(doc: dict[str, Any], *, prometheus_port: int, alertmanager_port: int,
                      scrape_interval: str | None, evaluation_interval: str | None,
                      engine_targets: list[str], file_sd_dir: Path) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    glob_ = out.setdefault("global", {})
    if scrape_interval:
        _with_timeout(glob_, scrape_interval)
    if evaluation_interval:
        glob_["evaluation_interval"] = evaluation_interval
    prom, am = f"127.0.0.1:{prometheus_port}", f"127.0.0.1:{alertmanager_port}"
    # Inside compose, Prometheus reaches itself as localhost:9090 and the others by service name.
    local = {"localhost:9090": prom, "prometheus:9090": prom, "alertmanager:9093": am}
    for job in out.get("scrape_configs", []):
        if scrape_interval and "scrape_interval" in job:
            _with_timeout(job, scrape_interval)
        for static in job.get("static_configs", []):
            targets: list[str] = []
            for target in static.get("targets", []):
                host = str(target).rsplit(":", 1)[0]
                if host in ENGINE_HOSTS:
                    targets += [t for t in engine_targets if t not in targets]
                else:
                    targets.append(local.get(str(target), target))
            static["targets"] = targets
        for sd in job.get("file_sd_configs", []):
            sd["files"] = [str(file_sd_dir / PurePosixPath(f).name) for f in sd.get("files", [])]
    rules_dir = REPO / "prometheus" / "rules"
    out["rule_files"] = [_under(rules_dir, f, "rules") for f in out.get("rule_files", [])]
    for manager in out.get("alerting", {}).get("alertmanagers", []):
        for static in manager.get("static_configs", []):
            static["targets"] = [am]
    return out


def _routes(route: dict[str, Any]) -> list[dict[str, Any]]:
    return [route] + [r for child in route.get("routes", []) for r in _routes(child)]


def _local_alertmanager(doc: dict[str, Any], *, group_wait: str | None, group_interval: str | None,
                        slack_url_file: Path) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    if "slack_api_url_file" in out.get("global", {}):
        out["global"]["slack_api_url_file"] = str(slack_url_file)
    for receiver in out.get("receivers", []):
        for slack in receiver.get("slack_configs", []):
            if "api_url_file" in slack:
                slack["api_url_file"] = str(slack_url_file)
    for i, route in enumerate(_routes(out.get("route", {}))):
        for key, value in (("group_wait", group_wait), ("group_interval", group_interval)):
            if value and (i == 0 or key in route):  # the root's value is inherited by the rest
                route[key] = value
    out["templates"] = [_under(REPO / "alertmanager" / "templates", t, "templates")
                        for t in out.get("templates", [])]
    return out


def _dump(path: Path, doc: dict[str, Any], source: Path) -> Path:
    header = (f"# Generated by monitoring/stack.py from {source}: only addresses, paths and\n"
              "# timing values differ from the shipped file. Do not edit.\n")
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
    return path


def render_configs(workdir: Path, *, prometheus_port: int, alertmanager_port: int,
                   scrape_interval: str | None = None, evaluation_interval: str | None = None,
                   group_wait: str | None = None, group_interval: str | None = None,
                   engine_targets: list[str], file_sd_dir: Path, slack_url_file: Path) -> RenderedConfigs:
    """Write loopback variants of the repo's Prometheus and Alertmanager configs into ``workdir``.

    Static engine targets become ``engine_targets``, the other compose hosts
    (``prometheus``, ``alertmanager``) their loopback ports; file_sd reads
    ``file_sd_dir``; rule files and templates are the repo's; Slack URLs come
    from ``slack_url_file``. Timing values are the shipped ones unless given.
    """
    for value in (scrape_interval, evaluation_interval, group_wait, group_interval):
        if value:
            seconds(value)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    prom = _local_prometheus(yaml.safe_load(PROMETHEUS_YML.read_text()), prometheus_port=prometheus_port,
                             alertmanager_port=alertmanager_port, scrape_interval=scrape_interval,
                             evaluation_interval=evaluation_interval, engine_targets=list(engine_targets),
                             file_sd_dir=Path(file_sd_dir).resolve())
    am = _local_alertmanager(yaml.safe_load(ALERTMANAGER_YML.read_text()), group_wait=group_wait,
                             group_interval=group_interval, slack_url_file=Path(slack_url_file).resolve())
    return RenderedConfigs(_dump(workdir / "prometheus.yml", prom, PROMETHEUS_YML),
                           _dump(workdir / "alertmanager.yml", am, ALERTMANAGER_YML))


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


def _container_running(client: Any, container: str) -> bool:
    try:
        return bool(client.containers.get(container).status == "running")
    except Exception:  # noqa: BLE001 - removed or engine gone
        return False


def docker_client() -> Any | None:
    """A Docker SDK client if the ``docker`` package is installed and an engine answers, else None."""
    try:
        import docker  # type: ignore[import-untyped]  # lazy: optional, and slow to import
    except ImportError:
        return None
    try:
        client = docker.from_env()
        client.ping()
    except Exception:  # noqa: BLE001 - any failure means "no usable engine"
        return None
    return client


def compose_images(compose_file: Path = REPO / "docker-compose.yml") -> dict[str, str]:
    """Pinned images of the ``prometheus`` and ``alertmanager`` services of the compose file."""
    services = yaml.safe_load(compose_file.read_text())["services"]
    return {name: services[name]["image"] for name in BINARIES}


def start_docker(workdir: Path, client: Any, *, prometheus_port: int = 9090, alertmanager_port: int = 9093,
                 engine_targets: list[str] | None = None, file_sd_dir: Path | None = None,
                 slack_url_file: Path | None = None, scrape_interval: str | None = None,
                 evaluation_interval: str | None = None, group_wait: str | None = None,
                 group_interval: str | None = None, resend_delay: str | None = None,
                 ready_timeout: float = 60.0) -> list[Service]:
    """The same loopback stack as :func:`start_local`, as containers of the compose file's images.

    Containers use the host network (so loopback addresses mean the same
    thing) and bind-mount every path they read at the same absolute path.
    """
    workdir, cmds, reads = _plan(workdir, False, prometheus_port, alertmanager_port, engine_targets, file_sd_dir,
                          slack_url_file, resend_delay, scrape_interval=scrape_interval,
                          evaluation_interval=evaluation_interval, group_wait=group_wait, group_interval=group_interval)
    mounts = {str(p): {"bind": str(p), "mode": "rw" if p == workdir else "ro"} for p in reads}
    services: list[Service] = []
    try:
        images = compose_images()
        for name in ("alertmanager", "prometheus"):  # as start_local: Alertmanager first
            image = images[name]
            port = prometheus_port if name == "prometheus" else alertmanager_port
            box = client.containers.run(image, cmds[name], detach=True, network_mode="host", volumes=mounts,
                                        user=f"{os.getuid()}:{os.getgid()}", labels={"plasticity.stack": str(workdir)},
                                        name=f"plasticity-{name}-{port}")
            services.append(Service(name, port, f"http://127.0.0.1:{port}", started_at=time.time(), container=box.id))
        write_state(workdir, "docker", services)
        _wait_ready(services, ready_timeout)
    except BaseException:
        _remove_containers(client, services)
        (workdir / STATE_FILE).unlink(missing_ok=True)
        raise
    return services


def _remove_containers(client: Any, services: list[Service]) -> list[Service]:
    removed = []
    for svc in services:
        try:
            box = client.containers.get(svc.container)
        except Exception as exc:  # noqa: BLE001 - removed by hand, or the engine forgot it
            log.info("%s container %s is gone already: %s", svc.name, svc.container[:12], exc)
            continue
        box.stop(timeout=10)
        box.remove()
        removed.append(svc)
    return removed


def stop_docker(workdir: Path, client: Any | None = None) -> list[Service]:
    """Stop and remove exactly the containers recorded in ``<workdir>/stack.json``."""
    state = read_state(workdir)
    if state is None:
        return []
    client = client or docker_client()
    if client is None:
        raise StackError("the stack was started with Docker, but no Docker engine is reachable now")
    removed = _remove_containers(client, state[1])
    (Path(workdir) / STATE_FILE).unlink(missing_ok=True)
    return removed

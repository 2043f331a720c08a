"""The loopback stack as containers of the compose file's images, through the Docker SDK.

:func:`start_docker` starts the same stack as :func:`monitoring.stack.start_local`
(same rendered configs, same command lines) when a Docker engine is reachable
(:func:`docker_client`); :func:`stop_docker` stops and removes exactly the
containers recorded in ``<workdir>/stack.json``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml

from monitoring.stack_config import REPO, StackError
from monitoring.stack_services import (
    BINARIES,
    STATE_FILE,
    Service,
    _plan,
    _wait_ready,
    read_state,
    write_state,
)

log = logging.getLogger("monitoring.stack")  # one logger name for the whole stack, as users see it


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
    """The same loopback stack as :func:`monitoring.stack.start_local`, as containers of the compose file's images.

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

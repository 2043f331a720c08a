"""The repo's Prometheus and Alertmanager configs, rendered for a loopback stack.

:func:`render_configs` reads ``prometheus/prometheus.yml`` and
``alertmanager/alertmanager.yml`` (the files ``docker compose`` mounts) and
writes copies into a work dir in which only addresses, file paths and timing
values differ: rules, routes, receivers and inhibitions stay byte-for-byte the
shipped ones, so what the tests exercise is what ships.

Used by both launchers (:mod:`monitoring.stack` for local processes,
:mod:`monitoring.stack_docker` for containers) and by the tests.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_YML = REPO / "prometheus" / "prometheus.yml"
ALERTMANAGER_YML = REPO / "alertmanager" / "alertmanager.yml"
#: The Slack webhook secret file ``docker compose`` reads by default (never committed).
COMPOSE_SLACK_URL_FILE = REPO / "secrets" / "slack_webhook_url"
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
    header = (f"# Generated by monitoring/stack_config.py from {source}: only addresses, paths and\n"
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

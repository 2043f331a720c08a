"""Real Prometheus/Alertmanager binaries for tests, and test copies of their configs.

Tests use the real binaries. When one is missing, :func:`require_binary` skips
the test with an install hint, except under ``CI=true`` where a missing binary
is a failure (CI installs them; a silent skip there would hide a broken set-up).

The shipped configs name container paths (``/etc/prometheus/...``,
``/run/secrets/...``) and compose host names; the ``render_*`` helpers write
copies pointing at the repository's files and at local paths, for the checks
and for end-to-end tests on loopback.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_YML = ROOT / "prometheus" / "prometheus.yml"
RULES_DIR = ROOT / "prometheus" / "rules"
RULE_TESTS_DIR = ROOT / "prometheus" / "tests"
ALERTMANAGER_YML = ROOT / "alertmanager" / "alertmanager.yml"
TEMPLATES_DIR = ROOT / "alertmanager" / "templates"

#: Binary -> Debian package that provides it. Alertmanager's Debian binary is
#: ``prometheus-alertmanager``; upstream tarballs call it ``alertmanager``.
_PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
}
_ALIASES = {"prometheus-alertmanager": ("prometheus-alertmanager", "alertmanager"),
            "alertmanager": ("alertmanager", "prometheus-alertmanager")}


def require_binary(name: str) -> str:
    """Absolute path of executable ``name``; skip the test (fail under CI=true) if missing.

    ``alertmanager`` and ``prometheus-alertmanager`` are accepted for each other.
    """
    for candidate in _ALIASES.get(name, (name,)):
        path = shutil.which(candidate)
        if path:
            return path
    package = _PACKAGES.get(name, name)
    message = (f"{name!r} not found on PATH; install it with "
               f"`sudo apt-get install -y {package}` (Debian/Ubuntu) or put the upstream "
               f"release binary on PATH")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: the monitoring tests must not be skipped)")
    pytest.skip(message)


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a server binary with stdout and stderr going to ``log``."""
    with open(log, "wb") as fh:  # the child keeps its own descriptor
        return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process this test started (by its handle): SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _dump(data: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def render_prometheus_config(dst: Path, *, rules_dir: Path = RULES_DIR, file_sd_dir: Path | None = None,
                             engine_targets: list[str] | None = None,
                             alertmanager: str | None = None,
                             scrape_interval: str | None = None,
                             evaluation_interval: str | None = None) -> Path:
    """Write a copy of prometheus.yml to ``dst`` for a local Prometheus.

    Rule files come from ``rules_dir`` and file_sd targets from ``file_sd_dir``
    (default: ``dst``'s directory / "file_sd"); ``engine_targets`` replaces the
    static ``engine:8000`` target; ``alertmanager`` (host:port) replaces
    ``alertmanager:9093``; the intervals override the engine jobs' scrape
    interval (and timeout) and the global evaluation interval. Jobs scraping
    the compose-only ``localhost:9090``/``alertmanager`` services are dropped.
    """
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    sd_dir = file_sd_dir or dst.parent / "file_sd"
    cfg["rule_files"] = [str(Path(rules_dir) / "*.yml")]
    if evaluation_interval:
        cfg["global"]["evaluation_interval"] = evaluation_interval
    if alertmanager:
        cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [alertmanager]
    else:
        cfg.pop("alerting")
    jobs = []
    for job in cfg["scrape_configs"]:
        if job["job_name"] == "engine":
            job["static_configs"][0]["targets"] = list(engine_targets or [])
        elif job["job_name"] == "engine_trials":
            job["file_sd_configs"][0]["files"] = [str(Path(sd_dir) / "*.json")]
        else:
            continue
        if scrape_interval:
            job["scrape_interval"] = job["scrape_timeout"] = scrape_interval
        jobs.append(job)
    cfg["scrape_configs"] = jobs
    return _dump(cfg, dst)


def render_alertmanager_config(dst: Path, slack_url_file: Path, *,
                               group_wait: str | None = None, group_interval: str | None = None,
                               repeat_interval: str | None = None) -> Path:
    """Write a copy of alertmanager.yml to ``dst`` for a local Alertmanager.

    Every Slack receiver reads its webhook URL from ``slack_url_file`` (write
    e.g. ``http://127.0.0.1:PORT/slack`` into it), templates come from the
    repository, and the given timings replace the production ones on the root
    route and on every child route.
    """
    cfg = yaml.safe_load(ALERTMANAGER_YML.read_text())
    cfg["templates"] = [str(TEMPLATES_DIR / "*.tmpl")]
    for receiver in cfg["receivers"]:
        for slack in receiver.get("slack_configs", []):
            slack["api_url_file"] = str(slack_url_file)
    timings = {"group_wait": group_wait, "group_interval": group_interval,
               "repeat_interval": repeat_interval}
    routes = [cfg["route"], *cfg["route"].get("routes", [])]
    for route in routes:
        for key, value in timings.items():
            if value is not None:
                route[key] = value
    return _dump(cfg, dst)


def duration_seconds(text: str) -> float:
    """Seconds in a Prometheus duration such as ``1h30m`` or ``15s``."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|[smhdwy])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * units[u] for n, u in parts)

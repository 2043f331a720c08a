"""Real Prometheus/Alertmanager binaries for tests, and the paths of the files they load.

Tests use the real binaries. When one is missing, :func:`require_binary` skips
the test with an install hint, except under ``CI=true`` where a missing binary
is a failure (CI installs them; a silent skip there would hide a broken set-up).

The shipped configs name container paths (``/etc/prometheus/...``,
``/run/secrets/...``) and compose host names; tests that run the binaries
render local copies with :func:`monitoring.stack_config.render_configs`, the
same code ``stack up`` uses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from monitoring.stack_config import ALERTMANAGER_YML, PROMETHEUS_YML
from monitoring.stack_config import seconds as duration_seconds

__all__ = ["ALERTMANAGER_YML", "PROMETHEUS_YML", "ROOT", "RULES_DIR", "RULE_TESTS_DIR", "TEMPLATES_DIR",
           "duration_seconds", "require_binary", "start", "stop"]

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "prometheus" / "rules"
RULE_TESTS_DIR = ROOT / "prometheus" / "tests"
TEMPLATES_DIR = ROOT / "alertmanager" / "templates"

#: Binary -> Debian package that provides it. Alertmanager's Debian binary is
#: ``prometheus-alertmanager``; upstream tarballs call it ``alertmanager``.
_PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
    "chromium": "chromium",  # the report browser tests
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
        pytest.fail(f"{message} (CI=true: tests that need it must not be skipped)")
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

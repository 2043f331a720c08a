"""Shared test fixtures and environment."""

from __future__ import annotations

import importlib
import os
import socket
from types import ModuleType

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
# One intra-op thread per process (before any test imports torch; inherited by every
# process a test starts): the suite runs on two workers over two cores, and torch's
# thread team waiting on a core the other worker holds made in-process tests ~1.8x
# slower in wall time for the same CPU work.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> int:
    """A free loopback port."""
    return free_port()


def require_module(name: str, package: str | None = None) -> ModuleType:
    """Import and return Python module ``name``; skip (fail under ``CI=true``) if it cannot be imported.

    The counterpart of :func:`binaries.require_binary` for optional Python
    packages, and a replacement for ``pytest.importorskip``: locally a missing
    package skips the calling test (or, called at import time, its module) with
    an install hint naming ``package`` (the pip distribution, when it differs
    from the module name); under ``CI=true`` it is a failure, since CI installs
    requirements.txt and a silent skip there would hide a broken set-up.
    """
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # not installed, or installed but broken
        message = (f"Python module {name!r} cannot be imported ({exc}); install it with "
                   f"`pip install {package or name}` (it is in requirements.txt)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: these tests must not be skipped)")
    pytest.skip(message, allow_module_level=True)

"""Helpers for the end-to-end tests: real CLI processes, real HTTP scrapes.

Every process is started from the repo root with ``sys.executable
scripts/run.py``; callers stop the ones they start with :func:`stop` in a
``finally`` block (by PID, never by name).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
RUN = [sys.executable, str(ROOT / "scripts" / "run.py")]
T = TypeVar("T")


def env(**extra: str) -> dict[str, str]:
    """Subprocess environment: no MLflow telemetry, one torch thread per process
    (two cores are shared by several runs; thread spinning only slows them)."""
    out = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_ALLOW_FILE_STORE="true",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    out.pop("MLFLOW_TRACKING_URI", None)
    out.update(extra)
    return out


def run(args: list[str], timeout: float = 60, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion (bounded) and capture its output."""
    return subprocess.run(RUN + args, cwd=ROOT, env=env(**extra_env), capture_output=True,
                          text=True, timeout=timeout)


@dataclass
class Proc:
    """A CLI process started in the background, its output going to files."""

    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def err(self) -> str:
        return self.stderr.read_text(errors="replace")


def start(args: list[str], logs: Path, **extra_env: str) -> Proc:
    """Start the CLI in the background; stdout/stderr go to files under ``logs``."""
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / "stdout.txt", logs / "stderr.txt"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        popen = subprocess.Popen(RUN + args, cwd=ROOT, env=env(**extra_env), stdout=fo, stderr=fe)
    return Proc(popen, out, err)


def stop(proc: Proc | None) -> None:
    """Kill ``proc`` (by its PID) if it is still running, and reap it."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGKILL)
    proc.popen.wait(timeout=10)


def wait_for(what: str, fn: Callable[[], T | None], timeout: float, interval: float = 0.05,
             proc: Proc | None = None) -> T:
    """Poll ``fn`` until it returns a truthy value; fail after ``timeout`` seconds
    (or as soon as ``proc`` has exited while ``fn`` is still falsy)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            value = fn()
            if value:
                return value
            raise AssertionError(f"process exited ({proc.poll()}) before {what}: {proc.err()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run_dir_in(output_dir: Path) -> Path | None:
    """The single run directory under ``output_dir/runs`` (None until it exists)."""
    runs = sorted((output_dir / "runs").glob("*")) if (output_dir / "runs").is_dir() else []
    assert len(runs) <= 1, runs
    return runs[0] if runs else None


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or None if it does not exist (yet)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete lines of a JSONL file (a trailing partial line is left out).

    Every complete line must be valid JSON.
    """
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")[:-1]  # the last element is "" or an unfinished line
    return [json.loads(line) for line in lines]


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Scrape:
    """One parsed scrape of ``/metrics``."""

    t: float  # time.time() when the response arrived
    samples: Samples
    families: dict[str, tuple[str, str]]  # family name -> (type, help)

    def get(self, name: str, **labels: str) -> list[float]:
        """Values of samples named ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return [v for (n, lab), v in self.samples.items() if n == name and want <= set(lab)]

    def one(self, name: str, **labels: str) -> float:
        """The single value of ``name`` with ``labels`` (fails if not exactly one)."""
        vals = self.get(name, **labels)
        assert len(vals) == 1, (name, labels, vals)
        return vals[0]

    def labelled(self, name: str) -> list[tuple[dict[str, str], float]]:
        """``(labels, value)`` of every sample named ``name``."""
        return [(dict(lab), v) for (n, lab), v in self.samples.items() if n == name]


def scrape(port: int, timeout: float = 5) -> Scrape:
    """GET http://127.0.0.1:port/metrics and parse it (raises if unreachable)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    t = time.time()
    samples: Samples = {}
    families: dict[str, tuple[str, str]] = {}
    for fam in text_string_to_metric_families(text):
        families[fam.name] = (fam.type, fam.documentation)
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = s.value
    return Scrape(t, samples, families)


def try_scrape(port: int, timeout: float = 5) -> Scrape | None:
    """:func:`scrape`, or None while nothing listens on the port."""
    try:
        return scrape(port, timeout)
    except OSError:  # URLError, connection refused/reset
        return None

"""Sweeps on a real Ray cluster (one local 2-CPU head) through the CLI, scraped by a real Prometheus.

The cluster is started once for the module with ``ray start --head --block``
in its own temp dir and stopped by killing exactly the processes it started
(its PID and their descendants), never with ``ray stop`` (which stops every
Ray of the user). Prometheus runs the shipped ``engine_trials`` job (1 s
scrapes) on the sweep's ``file_sd`` directory. Every wait polls a condition.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from _e2e import ROOT, Proc, env, read_json, run, start, stop, wait_for
from binaries import PROMETHEUS_YML, require_binary
from conftest import free_port

from engine.errors import ConfigError
from engine.sweep.executor import make_executor

NODE = "ray-test-head"  # the head's --node-name: the trials' `node` label


def require_ray() -> None:
    """Skip without the optional ``ray`` package (fail under ``CI=true``, which installs it)."""
    if importlib.util.find_spec("ray") is not None:
        return
    message = "Python package 'ray' is not installed; install it with `pip install -r requirements-ray.txt`"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: the Ray executor tests must not be skipped)")
    pytest.skip(message)


def _descendants(pid: int) -> list[int]:
    """``pid``'s descendants (by parent PID, so also those that started their own session)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(_ppid(int(entry.name)), []).append(int(entry.name))
            except OSError:
                continue  # it ended meanwhile
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@dataclass(frozen=True)
class Cluster:
    """A test Ray cluster: its address, what a driver needs in its environment, its nodes' TMPDIR."""

    address: str
    env: dict[str, str]
    tmp: Path


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running one-node Ray cluster (2 CPUs).

    Token authentication with a token of its own (as a real cluster should
    run), so neither ``~/.ray/auth_token`` nor another Ray on the machine
    matters; a TMPDIR of its own, so the trials' scratch directories are told
    apart from those of another test session running at the same time.
    """
    require_ray()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    ray_bin = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    logs = tmp_path_factory.mktemp("ray-head")
    # Short: Ray's unix socket paths live under it (at most 107 characters).
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    scratch = Path(temp) / "tmp"
    scratch.mkdir()
    with open(logs / "ray.log", "wb") as fh:  # the child keeps its own descriptor
        popen = subprocess.Popen(
            [ray_bin, "start", "--head", "--block", "--num-cpus", "2", "--node-name", NODE,
             f"--port={free_port()}", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
             f"--object-store-memory={100 * 2**20}"],
            cwd=temp, env=env(**auth, TMPDIR=str(scratch)), stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True)
    head = Proc(popen, logs / "ray.log", logs / "ray.log")
    try:
        address = wait_for("the Ray head", lambda: _head_address(logs / "ray.log"), timeout=120, interval=0.2,
                           proc=head)
        yield Cluster(address, auth, scratch)
    finally:
        # Everything the head started, workers included (they have sessions of their own).
        for pid in [*_descendants(popen.pid), popen.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        popen.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def _head_address(log: Path) -> str | None:
    text = log.read_text(errors="replace")
    if "Ray runtime started" not in text:
        return None
    # "ray start --address='<ip>:<port>'": the address workers (and drivers) use.
    return text.split("ray start --address='", 1)[1].split("'", 1)[0]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real Prometheus running the shipped engine_trials job on ``tmp_path/file_sd``; (url, file_sd dir)."""
    binary = require_binary("prometheus")
    file_sd = tmp_path / "file_sd"
    file_sd.mkdir()
    doc = yaml.safe_load(PROMETHEUS_YML.read_text())
    (job,) = [j for j in doc["scrape_configs"] if j["job_name"] == "engine_trials"]
    job.update(scrape_interval="1s", scrape_timeout="1s")
    for sd in job["file_sd_configs"]:
        sd["files"] = [str(file_sd / PurePosixPath(f).name) for f in sd["files"]]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": [job]}))
    port = free_port()
    with open(tmp_path / "prometheus.log", "wb") as fh:
        popen = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                  f"--web.listen-address=127.0.0.1:{port}"], stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("Prometheus ready", lambda: _get(f"{url}/-/ready") is not None, timeout=30, interval=0.2)
        yield url, file_sd
    finally:
        stop(Proc(popen, tmp_path / "prometheus.log", tmp_path / "prometheus.log"))


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read()
    except OSError:
        return None


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    body = _get(f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    return json.loads(body)["data"]["result"] if body else []


def _trial_pid(run_dir_name: str, under: Path) -> int | None:
    """PID of the ``python -m engine trial <under>/.../<run_dir_name>`` process."""
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "trial" in argv and "engine" in argv and any(
                Path(a).name == run_dir_name and Path(a).is_relative_to(under) for a in argv):
            return int(entry.name)
    return None


SWEEP = ("sweep:\n  name: onray\nwarm_up_epochs: {epochs}\nadaptation_epochs: 0\nhidden_dim: 8\n"
         "n_samples: 200\ntensorboard: false\nconsole: \"off\"\nmetrics_hold: {hold}\nreport: false\n"
         "metrics_linger: {linger}\n")


def test_sweep_on_ray_is_scraped_and_survives_a_killed_trial(
        tmp_path: Path, ray_cluster: Cluster, prometheus: tuple[str, Path]) -> None:
    prom, file_sd = prometheus
    sweep = tmp_path / "onray.yaml"
    # Trial 001 trains far longer than the test waits; the others end at once but keep
    # serving for metrics_hold seconds, long enough for Prometheus to discover them.
    sweep.write_text(SWEEP.format(epochs="[100000, 3, 4]", hold=10, linger=5))
    out = tmp_path / "out"
    t0 = time.monotonic()
    cli = start(["-s", str(sweep), "--parallel", "3", "--output_dir", str(out), "--file_sd_dir", str(file_sd),
                 "--executor", "ray", "--ray_address", ray_cluster.address, "--trial_cpus", "0.5"], tmp_path / "cli",
                **ray_cluster.env)
    try:
        # Prometheus scraped the long trial twice, through file_sd, with its node label...
        up = f'up{{job="engine_trials", sweep="onray", trial="001", node="{NODE}"}}'
        wait_for("2 scrapes of trial 001", lambda: _query(prom, f"sum_over_time({up}[1m]) >= 2"),
                 timeout=90, interval=0.5, proc=cli)
        (sweep_dir,) = (out / "sweeps").iterdir()
        (victim,) = sweep_dir.glob("run_001_*")
        # ... while it trains: now kill its process on the node, as a crash or the OOM killer would.
        assert (read_json(victim / "metrics.json") or {}).get("status") in (None, "running")
        pid = wait_for("trial 001's process", lambda: _trial_pid(victim.name, sweep_dir), timeout=10)
        os.kill(pid, signal.SIGKILL)
        assert cli.wait(timeout=120) == 1, cli.err()[-3000:]  # 1: a trial failed, the sweep went on
    finally:
        stop(cli)
    elapsed = time.monotonic() - t0
    rows = _rows(sweep_dir / "sweep_summary.csv")
    assert sorted(rows) == ["1", "2", "3"]
    assert rows["1"]["status"] == "failed" and "killed by SIGKILL" in rows["1"]["error"], rows["1"]
    assert rows["2"]["status"] == rows["3"]["status"] == "finished", (rows["2"], rows["3"])
    node_ip = ray_cluster.address.rpartition(":")[0]
    for trial in ("001", "002", "003"):  # every trial was scraped where it ran, on the node's IP, with its labels
        (run_dir,) = sweep_dir.glob(f"run_{trial}_*")
        run_id = json.loads((run_dir / "identity.json").read_text())["run_id"]
        (series,) = _query(prom, f'max_over_time(up{{trial="{trial}", run="{run_id}", node="{NODE}"}}[5m]) == 1')
        assert series["metric"]["instance"].startswith(f"{node_ip}:"), series
    for trial in ("002", "003"):
        (run_dir,) = sweep_dir.glob(f"run_{trial}_*")
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "finished"
    assert list(file_sd.glob("*.json")) == []  # every target removed, the sweep's file too
    print(f"ray sweep: {elapsed:.1f} s")


def _scratch_dirs(tmp: Path) -> set[Path]:
    return set(tmp.glob("plasticity-trial-*"))


def _ppid(pid: int) -> int:
    return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])


def _rows(csv_path: Path) -> dict[str, dict[str, str]]:
    try:
        return {r["trial"]: r for r in csv.DictReader(csv_path.open())}
    except OSError:
        return {}


def test_gathered_trials_lost_actor_and_sigterm(tmp_path: Path, ray_cluster: Cluster) -> None:
    """Without a shared file system (forced here): a run dir comes back as the local executor leaves it;
    a trial whose actor dies (as with its node) comes back with nothing and is recorded failed; the
    coordinator's SIGTERM reaches a trial through its actor, which ends interrupted with its checkpoint."""
    # 001 as the local sweep runs it; 002 trains until its actor is killed, 003 until the sweep is stopped.
    (tmp_path / "onray.yaml").write_text(SWEEP.format(epochs="[2, 100000, 99999]", hold=0, linger=0))
    (tmp_path / "local.yaml").write_text(SWEEP.format(epochs="[2]", hold=0, linger=0))
    before = _scratch_dirs(ray_cluster.tmp)
    on_ray = local = None
    try:  # both at once: each is mostly process start-up
        on_ray = start(["-s", str(tmp_path / "onray.yaml"), "--output_dir", str(tmp_path / "ray"), "--parallel", "3",
                        "--executor", "ray", "--ray_address", ray_cluster.address, "--trial_cpus", "0.5"],
                       tmp_path / "ray-cli", PLASTICITY_RAY_GATHER="1", **ray_cluster.env)
        local = start(["-s", str(tmp_path / "local.yaml"), "--output_dir", str(tmp_path / "local")],
                      tmp_path / "local-cli")
        # Each trial runs in a scratch copy on the node; its parent is its actor's Ray worker.
        lost = wait_for("trial 002's dir", lambda: next((tmp_path / "ray" / "sweeps").glob("*/run_002_*"), None),
                        timeout=60, proc=on_ray).name
        trial = wait_for("trial 002's process", lambda: _trial_pid(lost, ray_cluster.tmp), timeout=90, proc=on_ray)
        os.kill(_ppid(trial), signal.SIGKILL)
        # Stop the sweep once 001 and 002 have their rows and 003 trains (an epoch in its scratch history).
        summary = next((tmp_path / "ray" / "sweeps").iterdir()) / "sweep_summary.csv"
        wait_for("rows of trials 001 and 002", lambda: {"1", "2"} <= set(_rows(summary)), timeout=90, proc=on_ray)
        wait_for("trial 003 training", lambda: any(p.stat().st_size for p in ray_cluster.tmp.glob(
            "plasticity-trial-*/run_003_*/history.jsonl")), timeout=90, proc=on_ray)
        os.kill(on_ray.pid, signal.SIGTERM)
        assert on_ray.wait(timeout=120) == 130, on_ray.err()[-3000:]
        assert local.wait(timeout=120) == 0, local.err()[-2000:]
        # The trial does not outlive its actor's worker (its parent-death signal is SIGTERM).
        wait_for("the orphaned trial to end", lambda: _trial_pid(lost, ray_cluster.tmp) is None, timeout=60)
    finally:
        stop(on_ray)
        stop(local)
    (ray_dir,), (local_dir,) = (tmp_path / "ray" / "sweeps").iterdir(), (tmp_path / "local" / "sweeps").iterdir()
    ray_csv, local_csv = ((d / "sweep_summary.csv").read_text().splitlines() for d in (ray_dir, local_dir))
    assert ray_csv[0] == local_csv[0]  # the same columns
    rows = _rows(ray_dir / "sweep_summary.csv")
    assert rows["1"]["status"] == "finished" and float(rows["1"]["epochs"]) == 2.0, rows["1"]
    assert rows["2"]["status"] == "failed" and "ray: trial lost on node" in rows["2"]["error"], rows["2"]
    assert rows["3"]["status"] == "interrupted", rows["3"]
    (ray_run,), (local_run,) = ray_dir.glob("run_001_*"), local_dir.glob("run_001_*")
    assert ray_run.name == local_run.name  # same config hash
    assert sorted(p.name for p in ray_run.iterdir()) == sorted(p.name for p in local_run.iterdir())
    doc = json.loads((ray_run / "metrics.json").read_text())
    assert doc["status"] == "finished" and doc["run_id"] == rows["1"]["run_id"]
    (stopped,) = ray_dir.glob("run_003_*")  # gathered when it ended: a resume continues from it
    assert json.loads((stopped / "metrics.json").read_text())["status"] == "interrupted"
    assert (stopped / "checkpoint.pt").is_file()
    # The scratch copies are gone, but the one of the trial whose actor was lost.
    left = _scratch_dirs(ray_cluster.tmp) - before
    assert [d for d in left if not (d / lost).is_dir()] == [], left
    for d in left:
        shutil.rmtree(d)


def test_unknown_executor_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="one of: local, ray"):
        make_executor("slurm")
    with pytest.raises(ConfigError, match="only with --executor ray"):
        make_executor("local", trial_gpus=1)


def test_executor_ray_without_ray_is_one_line_and_exit_2(tmp_path: Path) -> None:
    fake = tmp_path / "noray"
    fake.mkdir()
    # Shadows an installed ray: importing it fails as on a machine without it.
    (fake / "ray.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    sweep = tmp_path / "s.yaml"
    sweep.write_text("sweep:\n  name: s\nlr: [0.01]\n")
    proc = run(["-s", str(sweep), "--executor", "ray", "--output_dir", str(tmp_path / "out")],
               PYTHONPATH=os.pathsep.join([str(fake), str(ROOT)]))
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: invalid value for 'executor'") and "pip install -r requirements-ray.txt" in line
    assert not (tmp_path / "out").exists()

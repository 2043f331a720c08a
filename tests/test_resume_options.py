"""``--resume RUN_DIR`` with runtime options: they apply (and are saved), the experiment cannot change.

The end-to-end test interrupts a real run with SIGTERM, shows that a plain
resume fails while its saved port is taken, resumes it on another port (same
run_id, scraped live), interrupts it again and finishes it with the endpoint
and console off. The CLI rejections run concurrently on a prepared run dir.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from _e2e import Proc, read_json, read_jsonl, run, run_dir_in, start, stop, try_scrape, wait_for
from conftest import free_port

from engine.config import build_config, dump_yaml, load_yaml, parameters, validate_nested
from engine.errors import ConfigError
from engine.resume import RESUME_TRAIN_KEYS, flat_diff, resume_config, resume_keys

EPOCHS = 150
FLAGS = ["--warm_up_epochs", str(EPOCHS), "--adaptation_epochs", "0", "--no_tensorboard",
         "--console", "plain", "--metrics_linger", "0", "--seed", "5"]


# -- units -----------------------------------------------------------------------

def test_resume_keys_are_telemetry_plus_device_threads_checkpoint_every() -> None:
    keys = set(resume_keys("seeds"))
    assert {"metrics_port", "metrics_host", "auto_port", "metrics_linger", "metrics_hold", "console",
            "tensorboard", "mlflow", "histogram_every", "strict_sinks", "neuron_topk", "report"} <= keys
    assert set(RESUME_TRAIN_KEYS) == {"device", "threads", "checkpoint_every", "nproc"} <= keys
    for key in ("lr", "seed", "experiment", "output_dir", "hidden_dim", "batch_size", "optimizer"):
        assert key not in keys, key
    assert resume_keys("plasticity") == resume_keys("seeds")  # no family key is runtime


def test_resume_config_applies_runtime_options_only() -> None:
    saved = build_config({"lr": 0.01, "metrics_port": 8000})
    cfg = resume_config(saved, {"metrics_port": 0, "console": "off", "threads": 2, "checkpoint_every": 3})
    assert (cfg.telemetry.metrics_port, cfg.telemetry.console, cfg.train.threads) == (0, "off", 2)
    assert parameters(cfg) == {**parameters(saved), "threads": 2, "checkpoint_every": 3}
    assert set(flat_diff(saved, cfg)) == {"metrics_port", "console", "threads", "checkpoint_every"}
    # An experiment option given with its saved value changes nothing: accepted.
    assert resume_config(saved, {"lr": 0.01, "seed": 42}) == saved
    with pytest.raises(ConfigError) as exc:
        resume_config(saved, {"lr": 0.5, "metrics_port": 0})
    assert exc.value.key == "lr" and exc.value.value == 0.5
    assert "cannot change on --resume" in exc.value.allowed and "0.01" in exc.value.allowed
    assert "metrics_port" in exc.value.allowed and "checkpoint_every" in exc.value.allowed
    with pytest.raises(ConfigError) as exc:
        resume_config(saved, {"mechanism": "redo"})  # a key of another family
    assert exc.value.key == "mechanism" and "'seeds'" in exc.value.allowed
    with pytest.raises(ConfigError) as exc:
        resume_config(saved, {"metrics_port": 70000})  # runtime, but invalid
    assert exc.value.key == "metrics_port"


# -- the CLI: rejections ------------------------------------------------------------

REJECTED = {
    "lr": (["--lr", "0.5"], ("'lr'", "0.5", "cannot change on --resume", "metrics_port", "console", "device")),
    "experiment": (["--experiment", "plasticity"], ("'experiment'", "plasticity", "cannot change on --resume")),
    "output_dir": (["--output_dir", "elsewhere"], ("'output_dir'", "elsewhere", "cannot change on --resume")),
    "family_key": (["--hidden_dim", "32", "--metrics_port", "0"], ("'hidden_dim'", "32", "cannot change")),
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory as a fresh launch leaves it before its first epoch (no run needed)."""
    run_dir = tmp_path_factory.mktemp("prepared") / "runs" / "prepared"
    run_dir.mkdir(parents=True)
    dump_yaml(build_config({"metrics_port": 0, "console": "off", "tensorboard": False}), run_dir / "config.yaml")
    return run_dir


@pytest.fixture(scope="module")
def rejected(prepared: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    def one(name: str) -> tuple[str, subprocess.CompletedProcess[str]]:
        return name, run(["--resume", str(prepared), *REJECTED[name][0]], timeout=90)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, REJECTED))


@pytest.mark.parametrize("name", list(REJECTED))
def test_resume_with_an_experiment_option_exits_2_with_one_line(
        name: str, rejected: dict[str, subprocess.CompletedProcess[str]], prepared: Path) -> None:
    r = rejected[name]
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for part in REJECTED[name][1]:
        assert part in lines[0], (part, lines[0])
    assert r.stdout == ""
    assert sorted(p.name for p in prepared.iterdir()) == ["config.yaml"]  # nothing written


# -- the CLI: a real interrupted run resumed with runtime options --------------------

def _live(port: int, min_epochs: float = 1) -> dict[str, str] | None:
    """run_info labels at ``port`` once the run has done ``min_epochs`` epochs."""
    s = try_scrape(port)
    if s is None or not s.get("plasticity_epochs_total") or s.one("plasticity_epochs_total") < min_epochs:
        return None
    return s.labelled("plasticity_run_info")[0][0]


def _interrupt(proc: Proc) -> None:
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 130, proc.err()[-3000:]


def test_resume_on_other_ports_and_sinks_keeps_the_run_and_finishes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    port1, port2 = free_port(), free_port()
    proc: Proc | None = None
    busy = socket.socket()
    try:
        proc = start([*FLAGS, "--metrics_port", str(port1), "--output_dir", str(out)], tmp_path / "logs1")
        first = wait_for("the first run's endpoint", lambda: _live(port1), timeout=90, proc=proc)
        _interrupt(proc)
        run_dir = run_dir_in(out)
        assert run_dir is not None
        identity = read_json(run_dir / "identity.json")
        assert (first["run_id"], first["config_hash"]) == (identity["run_id"], identity["config_hash"])
        original = yaml.safe_load((run_dir / "config.yaml").read_text())
        stopped = int(read_json(run_dir / "metrics.json")["metrics"]["epochs"])
        assert stopped < EPOCHS

        # Someone else now has the saved port: a plain resume is bad input ...
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the scrapes left TIME_WAITs
        busy.bind(("127.0.0.1", port1))
        busy.listen()
        r = run(["--resume", str(run_dir)], timeout=90)
        assert r.returncode == 2 and "metrics_port" in r.stderr, r.stderr[-3000:]

        # ... but it can resume on another port: same run_id and config hash, live.
        proc = start(["--resume", str(run_dir), "--metrics_port", str(port2)], tmp_path / "logs2")
        second = wait_for("the resumed endpoint", lambda: _live(port2, stopped + 1), timeout=90, proc=proc)
        assert second == first
        _interrupt(proc)
    finally:
        stop(proc)
        busy.close()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["telemetry"] == {**original["telemetry"], "metrics_port": port2}  # saved for the next resume
    assert {k: v for k, v in saved.items() if k != "telemetry"} == {
        k: v for k, v in original.items() if k != "telemetry"}

    r = run(["--resume", str(run_dir), "--metrics_port", "0", "--console", "off"], timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and f"finished: {run_dir}" in r.stderr
    doc = read_json(run_dir / "metrics.json")
    assert doc["status"] == "finished" and doc["metrics"]["epochs"] == EPOCHS
    assert (doc["run_id"], doc["config_hash"]) == (identity["run_id"], identity["config_hash"])
    assert read_json(run_dir / "identity.json") == identity
    assert [row["epoch"] for row in read_jsonl(run_dir / "history.jsonl")] == list(range(EPOCHS))
    final = load_yaml(run_dir / "config.yaml")
    assert (final.telemetry.metrics_port, final.telemetry.console) == (0, "off")
    assert parameters(final) == parameters(validate_nested(original))  # the same experiment
    log = (run_dir / "run.log").read_text()
    assert "runtime options changed" in log and "metrics_port" in log and "console 'plain' -> 'off'" in log
    # The console was off in the last leg (the first two logged through it).
    assert "engine.console: " not in r.stderr
    assert "engine.console: " in (tmp_path / "logs2" / "stderr.txt").read_text()

"""Fault drills on real runs: a NaN loss diverges cleanly; a broken sink never stops training.

Each run serves metrics on a free port with a linger, and is scraped from the
moment the port opens until a scrape shows the run's final status, so the
final values are seen live.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from _e2e import Proc, Scrape, read_json, read_jsonl, run, run_dir_in, start, stop, try_scrape
from conftest import free_port

from engine.config import build_config, dump_yaml

# Long, so a linger that the post-end scrape did not end shows as a wait of a minute,
# far from the few seconds a loaded machine may take to exit after that scrape.
LINGER = "60"
QUIET = ["--console", "off", "--no_tensorboard"]
SHORT = ["--warm_up_epochs", "3", "--adaptation_epochs", "3"]  # 25 steps per epoch
STEPS_PER_EPOCH = 25  # 1600 training samples / batch 64


def _status(s: Scrape) -> str:
    on = [lab["status"] for lab, v in s.labelled("plasticity_run_status") if v == 1.0]
    assert len(on) == 1, on
    return on[0]


def scrape_to_the_end(proc: Proc, port: int, timeout: float = 90) -> tuple[list[Scrape], float]:
    """Scrape from the moment the port opens until a scrape shows a final status.

    Returns every scrape (the last one shows the final status) and how long
    the process took to exit after that last scrape.
    """
    scrapes: list[Scrape] = []
    deadline = time.monotonic() + timeout
    while not scrapes or not scrapes[-1].get("plasticity_run_status") or _status(scrapes[-1]) == "running":
        assert time.monotonic() < deadline, "timed out scraping"
        s = try_scrape(port)
        if s is not None:
            scrapes.append(s)
        elif proc.poll() is not None:
            raise AssertionError(f"endpoint gone before a scrape saw the end (scrapes: {len(scrapes)}): "
                                 f"{proc.err()[-3000:]}")
        time.sleep(0.02 if not scrapes else 0.05)
    proc.wait(timeout=float(LINGER) + 10)
    return scrapes, time.time() - scrapes[-1].t


def run_scraped(args: list[str], port: int, logs: Path, **env: str) -> tuple[int, list[Scrape], float, Proc]:
    """Start the CLI, scrape it to its final status, and return its exit code too."""
    proc: Proc | None = None
    try:
        proc = start(args, logs, **env)
        scrapes, exit_after = scrape_to_the_end(proc, port)
        return proc.wait(timeout=10), scrapes, exit_after, proc
    finally:
        stop(proc)


def _sink_failures(run_dir: Path, sink: str) -> list[str]:
    return [ln for ln in (run_dir / "run.log").read_text().splitlines()
            if f"telemetry sink '{sink}' failed" in ln]


@pytest.mark.parametrize("nan_step", [0, 4 * STEPS_PER_EPOCH + 10], ids=["first_step", "mid_run"])
def test_nan_loss_diverges_with_exit_3(tmp_path: Path, nan_step: int) -> None:
    port = free_port()
    out = tmp_path / "out"
    rc, scrapes, exit_after, proc = run_scraped(
        ["--fault_nan_step", str(nan_step), "--metrics_port", str(port), "--metrics_linger", LINGER,
         *SHORT, *QUIET, "--output_dir", str(out)], port, tmp_path / "logs")
    assert rc == 3, proc.err()[-3000:]
    assert "Traceback" not in proc.err()
    final = scrapes[-1]
    assert _status(final) == "diverged"
    assert final.one("plasticity_nonfinite_loss_steps_total") == 1.0
    assert final.one("plasticity_steps_total") == nan_step + 1  # the failing step ran
    assert final.one("plasticity_epochs_total") == nan_step // STEPS_PER_EPOCH
    assert exit_after < float(LINGER) / 2, exit_after  # the post-end scrape ended the linger

    run_dir = run_dir_in(out)
    assert run_dir is not None
    doc = read_json(run_dir / "metrics.json")
    assert doc["status"] == "diverged"
    assert f"step {nan_step}" in doc["error"] and "non-finite" in doc["error"], doc["error"]
    assert doc["metrics"]["steps"] == nan_step + 1
    assert doc["metrics"]["epochs"] == nan_step // STEPS_PER_EPOCH
    # The history up to the divergence is kept, every line valid JSON.
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(nan_step // STEPS_PER_EPOCH))
    if rows:
        assert doc["metrics"]["val_accuracy"] == rows[-1]["val_accuracy"]
    events = read_jsonl(run_dir / "events.jsonl")
    nonfinite = [e for e in events if e["event"] == "NonFiniteLoss"]
    assert len(nonfinite) == 1 and nonfinite[0]["step"] == nan_step
    assert nonfinite[0]["epoch"] == nan_step // STEPS_PER_EPOCH
    assert nonfinite[0]["value"] == "nan"
    assert [e["status"] for e in events if e["event"] == "RunEnded"] == ["diverged"]
    assert f"step {nan_step}" in (run_dir / "run.log").read_text()


def _mlflow_env() -> dict[str, str]:
    closed = free_port()  # nothing listens there
    return {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed}", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}


def test_unreachable_mlflow_does_not_stop_training(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "out"
    rc, scrapes, _, proc = run_scraped(["--mlflow", "--metrics_port", str(port), "--metrics_linger", LINGER,
                                        *SHORT, *QUIET, "--output_dir", str(out)], port, tmp_path / "logs",
                                       **_mlflow_env())
    assert rc == 0, proc.err()[-3000:]
    final = scrapes[-1]
    assert _status(final) == "finished"
    assert final.one("plasticity_sink_errors_total", sink="mlflow") == 1.0
    for sink in ("results", "prometheus"):
        assert final.one("plasticity_sink_errors_total", sink=sink) == 0.0
    assert final.one("plasticity_epochs_total") == 6
    run_dir = run_dir_in(out)
    assert run_dir is not None
    doc = read_json(run_dir / "metrics.json")
    assert doc["status"] == "finished" and doc["metrics"]["epochs"] == 6
    failures = _sink_failures(run_dir, "mlflow")
    assert len(failures) == 1, failures  # reported once, then the sink is disabled
    assert "ERROR" in failures[0] and "127.0.0.1" in failures[0]
    assert "Traceback" not in (run_dir / "run.log").read_text()
    sink_events = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "SinkFailed"]
    assert [e["sink"] for e in sink_events] == ["mlflow"]
    assert not (out / "mlruns").exists()  # it did not fall back to a local store


def test_unreachable_mlflow_with_strict_sinks_fails_the_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = run(["--mlflow", "--strict_sinks", "--metrics_port", "0", *SHORT, *QUIET, "--output_dir", str(out)],
            timeout=90, **_mlflow_env())
    assert r.returncode == 1, r.stderr[-3000:]
    run_dir = run_dir_in(out)
    assert run_dir is not None
    doc = read_json(run_dir / "metrics.json")
    assert doc["status"] == "failed"
    assert "mlflow" in doc["error"].lower() or "127.0.0.1" in doc["error"], doc["error"]
    assert doc["metrics"]["epochs"] < 6  # it stopped, it did not train on
    assert [e["status"] for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "RunEnded"] == ["failed"]


def test_unwritable_tensorboard_dir_does_not_stop_training(tmp_path: Path) -> None:
    # A run directory whose ``tensorboard`` path is a file: the writer cannot create its dir.
    port = free_port()
    run_dir = tmp_path / "out" / "runs" / "prepared"
    run_dir.mkdir(parents=True)
    cfg = build_config({"output_dir": str(tmp_path / "out"), "metrics_port": port,
                        "metrics_linger": float(LINGER), "console": "off", "tensorboard": True,
                        "warm_up_epochs": 3, "adaptation_epochs": 3})
    dump_yaml(cfg, run_dir / "config.yaml")
    (run_dir / "tensorboard").write_text("in the way\n")
    rc, scrapes, _, proc = run_scraped(["--resume", str(run_dir)], port, tmp_path / "logs")
    assert rc == 0, proc.err()[-3000:]
    final = scrapes[-1]
    assert _status(final) == "finished"
    assert final.one("plasticity_sink_errors_total", sink="tensorboard") == 1.0
    assert final.one("plasticity_epochs_total") == 6
    doc = read_json(run_dir / "metrics.json")
    assert doc["status"] == "finished" and doc["metrics"]["epochs"] == 6
    failures = _sink_failures(run_dir, "tensorboard")
    assert len(failures) == 1, failures
    assert (run_dir / "tensorboard").read_text() == "in the way\n"

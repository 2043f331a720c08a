"""Crash and interrupt a real run, resume it, and get the uninterrupted result exactly.

Run A trains without interruption. Run B, with the same flags, is SIGKILLed
mid-adaptation right after a seed germinated and then resumed from its
checkpoint; run C gets SIGTERM (graceful: exit 130, status ``interrupted``)
and is resumed too. Both must end with A's numbers and seed states.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from _e2e import Proc, read_json, read_jsonl, run, run_dir_in, start, stop, wait_for

FLAGS = ["--seed", "7", "--metrics_port", "0", "--no_tensorboard", "--console", "plain"]
EPOCHS = 80  # default schedule; germination happens around epoch 35-45
COMPARED = ("val_accuracy", "val_loss", "train_loss", "best_val_accuracy", "germinations", "steps",
            "epochs", "parameters", "grad_norm", "learning_rate")


def _final(run_dir: Path) -> dict[str, Any]:
    doc = read_json(run_dir / "metrics.json")
    assert doc is not None
    return doc


def _seed_states(run_dir: Path) -> dict[str, Any]:
    return read_jsonl(run_dir / "history.jsonl")[-1]["seeds"]


def _assert_same_result(a: Path, b: Path) -> None:
    ma, mb = _final(a)["metrics"], _final(b)["metrics"]
    for key in COMPARED:
        assert key in ma and key in mb, key
        assert math.isclose(ma[key], mb[key], rel_tol=0, abs_tol=1e-6), (key, ma[key], mb[key])
    assert _seed_states(a) == _seed_states(b)


def _germinated_in_adaptation(run_dir: Path) -> bool:
    events = read_jsonl(run_dir / "events.jsonl")
    history = read_jsonl(run_dir / "history.jsonl")
    germinated = any(e["event"] == "SeedTransition" and e["to_state"] == "training" for e in events)
    return germinated and bool(history) and history[-1]["phase"] == "adaptation"


@pytest.fixture(scope="module")
def run_a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], Path]]:
    """Run A, started in the background so it overlaps run B; call to wait for it."""
    tmp = tmp_path_factory.mktemp("run_a")
    proc = start(FLAGS + ["--output_dir", str(tmp / "out")], tmp / "logs")

    def finished() -> Path:
        assert proc.wait(timeout=120) == 0, proc.err()[-3000:]
        run_dir = run_dir_in(tmp / "out")
        assert run_dir is not None
        doc = _final(run_dir)
        assert doc["status"] == "finished"
        assert doc["metrics"]["epochs"] == EPOCHS
        assert doc["metrics"]["germinations"] >= 1
        return run_dir

    try:
        yield finished
    finally:
        stop(proc)


def test_sigkill_mid_adaptation_then_resume_equals_uninterrupted(
        tmp_path: Path, run_a: Callable[[], Path]) -> None:
    b_out = tmp_path / "out"
    proc: Proc | None = None
    try:
        proc = start(FLAGS + ["--output_dir", str(b_out)], tmp_path / "logs")
        b_dir = wait_for("run B's dir", lambda: run_dir_in(b_out), timeout=60, proc=proc)
        wait_for("a germination in the adaptation phase", lambda: _germinated_in_adaptation(b_dir),
                 timeout=90, interval=0.02, proc=proc)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        stop(proc)
    killed = _final(b_dir)
    assert killed["status"] == "running"  # what a crash leaves behind
    killed_epoch = killed["metrics"]["epoch"]
    assert 30 <= killed_epoch < EPOCHS - 1, killed_epoch  # really mid-adaptation
    assert (b_dir / "checkpoint.pt").is_file()

    r = run(["--resume", str(b_dir)], timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert f"finished: {b_dir}" in r.stderr
    resumed = _final(b_dir)
    assert resumed["status"] == "finished"
    assert "resumed" in (b_dir / "run.log").read_text()
    _assert_same_result(run_a(), b_dir)
    # The resumed part of the history continues where the checkpoint left off.
    epochs = [row["epoch"] for row in read_jsonl(b_dir / "history.jsonl")]
    assert epochs[-1] == EPOCHS - 1
    assert epochs == list(range(EPOCHS))  # a re-run epoch replaces its rows, never duplicates them


def test_sigterm_interrupts_cleanly_and_resume_finishes(tmp_path: Path, run_a: Callable[[], Path]) -> None:
    out = tmp_path / "out"
    proc: Proc | None = None
    try:
        proc = start(FLAGS + ["--output_dir", str(out)], tmp_path / "logs")
        run_dir = wait_for("the run dir", lambda: run_dir_in(out), timeout=60, proc=proc)
        in_phase_2 = lambda: any(r["phase"] == "adaptation" for r in read_jsonl(run_dir / "history.jsonl"))  # noqa: E731
        wait_for("the adaptation phase", in_phase_2, timeout=90, interval=0.02, proc=proc)
        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=30)
        err = proc.err()
    finally:
        stop(proc)
    assert rc == 130, err[-3000:]
    assert "Traceback" not in err
    assert "received SIGTERM" in err
    doc = _final(run_dir)
    assert doc["status"] == "interrupted"
    metrics = doc["metrics"]
    stopped_at = int(metrics["epochs"])
    assert 31 <= stopped_at < EPOCHS, stopped_at
    for key in ("val_accuracy", "val_loss", "train_loss", "best_val_accuracy", "steps"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["val_accuracy"] <= metrics["best_val_accuracy"] <= 1.0
    assert (run_dir / "checkpoint.pt").is_file()
    assert not (run_dir / "endpoint.json").exists()
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line is complete, valid JSON
    # A graceful stop checkpoints the last complete epoch: history and checkpoint agree.
    assert [r["epoch"] for r in rows] == list(range(stopped_at))
    ended = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "RunEnded"]
    assert [e["status"] for e in ended] == ["interrupted"]

    r = run(["--resume", str(run_dir)], timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = _final(run_dir)
    assert doc["status"] == "finished"
    assert doc["metrics"]["epochs"] == EPOCHS
    rows = read_jsonl(run_dir / "history.jsonl")
    assert [r["epoch"] for r in rows] == list(range(EPOCHS))  # nothing lost, nothing repeated
    assert rows[-1]["step"] == doc["metrics"]["steps"]
    _assert_same_result(run_a(), run_dir)

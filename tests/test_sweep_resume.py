"""``--resume SWEEP_DIR``: a killed grid or Bayesian sweep finishes without redoing settled trials."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from _e2e import read_json, read_jsonl, run, start, stop, wait_for
from _sweep_search import (FLAGS, PRUNING_SEARCH, TINY, assert_study_matches_summary, summary_rows,
                           trial_processes, yaml_text)
from engine.cli.main import main
from engine.sweep.plan import lock_sweep


def _running_second(sweep_dir: Path) -> Path | None:
    """Trial 2's directory once it has written an epoch and is still running."""
    for run_dir in sweep_dir.glob("run_002_*"):
        doc = read_json(run_dir / "metrics.json")
        if doc and doc.get("status") == "running" and (run_dir / "history.jsonl").is_file() \
                and (run_dir / "history.jsonl").stat().st_size > 0:
            return run_dir
    return None


def _kill_during_second(args: list[str], out: Path, logs: Path) -> tuple[Path, dict[str, str], Path]:
    """Start a sweep (1 at a time); SIGKILL its coordinator once trial 1 finished and trial 2 runs."""
    proc = start(args, logs)
    try:
        sweep_dir = wait_for("the sweep directory", lambda: next((out / "sweeps").glob("*"), None)
                             if (out / "sweeps").is_dir() else None, timeout=120, proc=proc)
        second = wait_for("trial 2 running", lambda: _running_second(sweep_dir), timeout=240, proc=proc)
        (first,) = summary_rows(sweep_dir)
        os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait(timeout=30)
    finally:
        stop(proc)
    # Trial 2 gets SIGTERM from the kernel (parent-death signal) and ends interrupted.
    wait_for("the orphaned trial to end", lambda: not trial_processes(sweep_dir), timeout=120)
    ended = [e["status"] for e in read_jsonl(second / "events.jsonl") if e.get("event") == "RunEnded"]
    assert ended == ["interrupted"], ended
    return sweep_dir, first, second


def _mtimes(run_dir: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in run_dir.iterdir() if p.is_file()}


def test_killed_bayes_search_resumes_without_redoing_finished_trials(tmp_path: Path) -> None:
    sweep = tmp_path / "bayes.yaml"
    search = PRUNING_SEARCH.replace("pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 3}", "pruner: none")
    sweep.write_text(yaml_text("kb", {**TINY, "warm_up_epochs": 250}, search))
    out = tmp_path / "out"
    sweep_dir, first, second = _kill_during_second(["-s", str(sweep), "--output_dir", str(out), *FLAGS], out,
                                                   tmp_path / "logs")
    assert first["trial"] == "1" and first["status"] == "finished"
    before = _mtimes(sweep_dir / first["run_dir"])
    run_id_2 = json.loads((second / "identity.json").read_text())["run_id"]
    proc = run(["--resume", str(sweep_dir)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = assert_study_matches_summary(sweep_dir, 3)
    assert rows[0] == first  # kept as written before the kill
    assert _mtimes(sweep_dir / first["run_dir"]) == before  # trial 1 did not run again
    assert "resumed in" in proc.stderr and "1 to continue" in proc.stderr
    # Trial 2 (left RUNNING in the study) continued in its directory, under its run_id, from its checkpoint.
    assert rows[1]["run_dir"] == second.name and rows[1]["run_id"] == run_id_2 and float(rows[1]["lr"]) == 1e-5
    ended = [e["status"] for e in read_jsonl(second / "events.jsonl") if e.get("event") == "RunEnded"]
    assert ended == ["interrupted", "finished"]
    assert [r["epoch"] for r in read_jsonl(second / "history.jsonl")] == list(range(250))
    assert sorted(p.name for p in sweep_dir.glob("run_*")) == [r["run_dir"] for r in rows]


def test_killed_grid_sweep_resumes_skipping_final_trials(tmp_path: Path) -> None:
    sweep = tmp_path / "grid.yaml"
    sweep.write_text(yaml_text("kg", {**TINY, "warm_up_epochs": 250}) + "lr: [0.05, 0.03]\n")
    out = tmp_path / "out"
    sweep_dir, first, second = _kill_during_second(["-s", str(sweep), "--output_dir", str(out), *FLAGS], out,
                                                   tmp_path / "logs")
    before = _mtimes(sweep_dir / first["run_dir"])
    run_id_2 = json.loads((second / "identity.json").read_text())["run_id"]
    proc = run(["--resume", str(sweep_dir)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = sorted(summary_rows(sweep_dir), key=lambda r: int(r["trial"]))
    assert [(r["trial"], r["status"]) for r in rows] == [("1", "finished"), ("2", "finished")]
    assert rows[0] == first and _mtimes(sweep_dir / first["run_dir"]) == before
    assert [float(r["lr"]) for r in rows] == [0.05, 0.03]
    # Trial 2 continued from its checkpoint in its directory under its run_id.
    assert rows[1]["run_dir"] == second.name and rows[1]["run_id"] == run_id_2
    ended = [e["status"] for e in read_jsonl(second / "events.jsonl") if e.get("event") == "RunEnded"]
    assert ended == ["interrupted", "finished"]
    # Resuming a finished sweep runs nothing.
    proc = run(["--resume", str(sweep_dir)], timeout=120)
    assert proc.returncode == 0 and "0 trials done" in proc.stderr, proc.stderr[-2000:]
    assert summary_rows(sweep_dir) == rows


def test_sweep_resume_refuses_options_and_a_live_coordinator(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    sweep_dir = tmp_path / "sd"
    sweep_dir.mkdir()
    (sweep_dir / "sweep_spec.yaml").write_text("lr: [0.01]\n")
    (sweep_dir / "sweep_state.json").write_text(json.dumps({"name": "sd", "kind": "grid", "base": {},
                                                            "parallel": None, "file_sd_dir": None}))
    assert main(["--resume", str(sweep_dir), "--lr", "0.1"]) == 2
    assert "'lr'" in capsys.readouterr().err
    lock = lock_sweep(sweep_dir)  # as a live coordinator holds it
    try:
        assert main(["--resume", str(sweep_dir)]) == 2
        err = capsys.readouterr().err
        assert "still running" in err and len(err.strip().splitlines()) == 1
    finally:
        lock.close()
    assert not (sweep_dir / "sweep_summary.csv").exists()

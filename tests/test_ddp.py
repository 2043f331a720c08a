"""Data-parallel runs (``--nproc 2``, gloo, real processes) against single-process runs.

After every structural change (germination, growth, replacement), at every
epoch end and at the end, each rank writes the sha256 of its model and
optimizer state (PLASTICITY_DDP_DEBUG_DIR): the ranks' hashes must be equal.
Final metrics must equal the single-process run's within TOLERANCE: with the
same global batch the math is the same up to float summation order (measured:
at most ~2e-7 relative on losses); counts (steps, germinations, units,
parameters) are exact.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from _e2e import Proc, read_json, read_jsonl, run, run_dir_in, start, stop, wait_for

#: Relative / absolute tolerance of every final metric of a 2-rank run against one process.
REL_TOL, ABS_TOL = 1e-5, 1e-6
COMMON = ["--metrics_port", "0", "--no_tensorboard", "--console", "plain", "--threads", "1"]
FAMILIES: dict[str, tuple[list[str], str]] = {  # flags, the structural change it must make
    "seeds": (["--warm_up_epochs", "3", "--adaptation_epochs", "12", "--patience", "2"], "germinate"),
    "neurogenesis": (["--experiment", "neurogenesis", "--hidden_sizes", "16,8", "--base_epochs", "5",
                      "--class_order", "0", "--plasticity_epochs", "2", "--stability_epochs", "2",
                      "--units_per_step", "2", "--growth_cap", "4", "--eval_every", "5", "--seed", "3"], "grow"),
    "plasticity": (["--experiment", "plasticity", "--seed", "3", "--per_class", "20", "--n_tasks", "4",
                    "--hidden_units", "16", "--probe_size", "150", "--diagnostics_every", "10",
                    "--maturity_threshold", "10", "--replacement_rate", "0.01", "--mechanism", "cbp"], "replace"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, Path]]:
    """Per family: (2-rank run dir, 1-process run dir, debug dir); all started together."""
    tmp = tmp_path_factory.mktemp("ddp")
    procs: dict[str, Proc] = {}
    try:
        for name, (flags, _) in FAMILIES.items():
            debug = tmp / f"debug_{name}"
            debug.mkdir()
            procs[f"{name}/2"] = start(COMMON + flags + ["--nproc", "2", "--output_dir", str(tmp / f"{name}2")],
                                       tmp / f"logs_{name}2", PLASTICITY_DDP_DEBUG_DIR=str(debug))
            procs[f"{name}/1"] = start(COMMON + flags + ["--output_dir", str(tmp / f"{name}1")], tmp / f"logs_{name}1")
        for key, proc in procs.items():
            assert proc.wait(timeout=480) == 0, (key, proc.err()[-3000:])
        out = {}
        for name in FAMILIES:
            two, one = run_dir_in(tmp / f"{name}2"), run_dir_in(tmp / f"{name}1")  # rank 0 alone wrote a run dir
            assert two is not None and one is not None
            out[name] = (two, one, tmp / f"debug_{name}")
        return out
    finally:
        for proc in procs.values():
            stop(proc)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_ranks_stay_bit_identical_through_structural_changes(runs: dict[str, tuple[Path, Path, Path]],
                                                             family: str) -> None:
    two, _, debug = runs[family]
    kind = FAMILIES[family][1]
    changes = [e for e in read_jsonl(two / "events.jsonl") if e.get("event") == "StructuralChange"]
    assert any(e["kind"] == kind for e in changes), changes
    ranks = [read_jsonl(debug / f"rank{r}.jsonl") for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) and ranks[0][-1]["why"] == "end"
    for a, b in zip(*ranks):
        assert (a["step"], a["why"], a["hash"]) == (b["step"], b["why"], b["hash"])
    # Every structural change is followed by a recorded hash (an epoch end at the latest).
    recorded = [line["step"] for line in ranks[0]]
    assert all(any(s >= e["step"] - 1 for s in recorded) for e in changes)
    if kind in ("germinate", "grow"):  # parameters changed: the step after it is recorded as a change
        assert sum(line["why"] == "change" for line in ranks[0]) >= 2


@pytest.mark.parametrize("family", list(FAMILIES))
def test_final_metrics_match_a_single_process(runs: dict[str, tuple[Path, Path, Path]], family: str) -> None:
    two, one, _ = runs[family]
    m2, m1 = read_json(two / "metrics.json"), read_json(one / "metrics.json")
    assert m2 is not None and m1 is not None and m2["status"] == m1["status"] == "finished"
    # --nproc is not in the config hash: the same experiment
    assert m2["config_hash"] == m1["config_hash"]
    a, b = m2["metrics"], m1["metrics"]
    assert set(a) == set(b)
    for key in sorted(set(a) - {"wall_seconds"}):
        assert math.isclose(a[key], b[key], rel_tol=REL_TOL, abs_tol=ABS_TOL), (key, a[key], b[key])


def test_nonfinite_loss_stops_every_rank(tmp_path: Path) -> None:
    r = run(COMMON + ["--nproc", "2", "--warm_up_epochs", "2", "--adaptation_epochs", "0", "--fault_nan_step", "7",
                      "--output_dir", str(tmp_path)], timeout=120)
    assert r.returncode == 3, r.stderr[-3000:]
    run_dir = run_dir_in(tmp_path)
    assert run_dir is not None
    metrics = read_json(run_dir / "metrics.json")
    assert metrics is not None and metrics["status"] == "diverged" and metrics["metrics"]["steps"] == 8


@pytest.mark.parametrize("flags, key", [(["--experiment", "apoptosis"], "nproc"),
                                        (["--experiment", "heads"], "nproc"),
                                        (["--child_optimizer", "own"], "child_optimizer")])
def test_unsupported_settings_are_rejected_up_front(tmp_path: Path, flags: list[str], key: str) -> None:
    r = run(flags + ["--nproc", "2", "--output_dir", str(tmp_path)], timeout=60)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and key in lines[0], r.stderr
    assert not (tmp_path / "runs").exists()  # nothing launched, nothing written


def test_a_busy_metrics_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Rank 0 finds the port busy once the ranks run: still one line, no launcher noise."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run(["--nproc", "2", "--metrics_port", str(port), "--console", "off", "--no_tensorboard",
                 "--warm_up_epochs", "1", "--adaptation_epochs", "1", "--output_dir", str(tmp_path)], timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "metrics_port" in lines[0] and "busy" in lines[0], r.stderr


def test_a_dead_rank_ends_the_group_with_a_nonzero_exit_and_the_run_resumes(tmp_path: Path) -> None:
    flags = COMMON + ["--warm_up_epochs", "300", "--adaptation_epochs", "0", "--batch_size", "400"]
    proc = start(flags + ["--nproc", "2", "--output_dir", str(tmp_path)], tmp_path / "logs")
    try:
        wait_for("a checkpoint", lambda: (d := run_dir_in(tmp_path)) and (d / "checkpoint.pt").is_file(),
                 timeout=120, proc=proc)
        ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(ranks) == 2, ranks
        os.kill(int(ranks[-1]), signal.SIGKILL)
        assert proc.wait(timeout=90) not in (0, None)
        wait_for("no orphan rank", lambda: not any(Path(f"/proc/{pid}").exists() for pid in ranks), timeout=30)
    finally:
        stop(proc)
    run_dir = run_dir_in(tmp_path)
    assert run_dir is not None
    r = run(["--resume", str(run_dir)], timeout=240)  # nproc 2 from its config.yaml
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = read_json(run_dir / "metrics.json")
    assert metrics is not None and metrics["status"] == "finished" and metrics["metrics"]["epochs"] == 300
    epochs = [row["epoch"] for row in read_jsonl(run_dir / "history.jsonl")]
    assert sorted(set(epochs)) == list(range(300)), epochs

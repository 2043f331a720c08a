"""SIGKILL a neurogenesis run after a class stage's checkpoint, resume it, get the uninterrupted result.

Run A trains without interruption; run B (same flags) is killed once its
checkpoint holds at least one completed stage (a grown architecture, replay
statistics, thresholds), then ``--resume`` finishes it. Final numbers, the
forgetting matrix, growth, thresholds and the replay counter must match A exactly.
Both run the family default, data-free intrinsic replay (``stats_source``
replay): the checkpoint carries the learned classes whose images stay
unreadable after the resume.
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import torch
from _e2e import Proc, read_json, read_jsonl, run, run_dir_in, start, stop, wait_for

BASE = 5
STAGES = 5
FLAGS = ["--experiment", "neurogenesis", "--hidden_sizes", "16,8", "--base_epochs", str(BASE),
         "--class_order", "0,2,3,4,5", "--plasticity_epochs", "4", "--stability_epochs", "4",
         "--units_per_step", "2", "--growth_cap", "4", "--eval_every", "7", "--seed", "11",
         "--metrics_port", "0", "--no_tensorboard", "--console", "plain", "--threads", "1"]
COMPARED = ("val_loss", "train_loss", "grad_norm", "steps", "epochs", "parameters", "replay_samples",
            "mean_forgetting", "newest_class_error", "units_encoder_0", "units_encoder_1")
ARTIFACTS = ("forgetting_matrix.csv", "growth.csv", "thresholds.json")


def _stages_done(run_dir: Path) -> int:
    return sum(r["phase"] == "incremental" for r in read_jsonl(run_dir / "history.jsonl"))


def test_sigkill_after_a_stage_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    a_proc: Proc | None = None
    b_proc: Proc | None = None
    try:
        a_proc = start(FLAGS + ["--output_dir", str(tmp_path / "a")], tmp_path / "logs_a")
        b_proc = start(FLAGS + ["--output_dir", str(tmp_path / "b")], tmp_path / "logs_b")
        b_dir = wait_for("run B's dir", lambda: run_dir_in(tmp_path / "b"), timeout=120, proc=b_proc)
        # The checkpoint follows the epoch's history row: after stage 2's row, stage 1's is on disk.
        wait_for("two completed stages", lambda: _stages_done(b_dir) >= 2, timeout=120, interval=0.01,
                 proc=b_proc)
        os.kill(b_proc.pid, signal.SIGKILL)
        assert b_proc.wait(timeout=10) == -signal.SIGKILL
        assert a_proc.wait(timeout=120) == 0, a_proc.err()[-3000:]
    finally:
        stop(a_proc)
        stop(b_proc)
    assert read_json(b_dir / "metrics.json")["status"] == "running"  # what a crash leaves behind
    ckpt = torch.load(b_dir / "checkpoint.pt", weights_only=False)
    done = ckpt["trainer"]["epoch"]
    assert BASE + 1 <= done < BASE + STAGES, done  # killed after a stage, before the end
    assert ckpt["experiment"]["sizes"] != [16, 8]  # the checkpoint holds a grown network
    learned = ckpt["experiment"]["data"]["retired"]  # base classes and the stages done so far: never read again
    assert learned == sorted([1, 7, *[0, 2, 3, 4, 5][: done - BASE]]), learned

    r = run(["--resume", str(b_dir)], timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "resumed" in (b_dir / "run.log").read_text()
    a_dir = run_dir_in(tmp_path / "a")
    assert a_dir is not None
    ma, mb = read_json(a_dir / "metrics.json")["metrics"], read_json(b_dir / "metrics.json")["metrics"]
    for key in COMPARED:
        assert math.isclose(ma[key], mb[key], rel_tol=0, abs_tol=1e-7), (key, ma[key], mb[key])
    assert ma["epochs"] == BASE + STAGES
    for name in ARTIFACTS:
        assert (a_dir / "artifacts" / name).read_text() == (b_dir / "artifacts" / name).read_text(), name
    assert [r["epoch"] for r in read_jsonl(b_dir / "history.jsonl")] == list(range(BASE + STAGES))

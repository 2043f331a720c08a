"""Every family stops on a non-finite loss the same way, through the trainer.

Real CLI runs of each family (tiny configurations) with the shared fault
drills: a NaN loss at the first step and mid-run ends ``diverged`` (exit 3)
without any update on the NaN; an exception ends ``failed`` (exit 1); with
``--on_diverge rollback`` the same NaN is answered by a rollback and the run
finishes; a learning rate blown up by the drill is counted as exploding.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _char import TINY_APOPTOSIS, TINY_HEADS
from _e2e import read_json, read_jsonl, run, run_dir_in

COMMON = ["--metrics_port", "0", "--no_tensorboard", "--console", "off", "--threads", "1", "--seed", "3"]
FAMILIES = {
    "seeds": ["--warm_up_epochs", "3", "--adaptation_epochs", "3"],  # 25 steps per epoch
    "neurogenesis": ["--experiment", "neurogenesis", "--hidden_sizes", "16,8", "--base_epochs", "5",
                     "--class_order", "0", "--plasticity_epochs", "2", "--stability_epochs", "2",
                     "--finetune_epochs", "2", "--units_per_step", "2", "--growth_cap", "4", "--eval_every", "5"],
    "plasticity": ["--experiment", "plasticity", "--per_class", "20", "--n_tasks", "4", "--hidden_units", "16",
                   "--probe_size", "150", "--diagnostics_every", "10", "--mechanism", "cbp",
                   "--maturity_threshold", "10", "--replacement_rate", "0.01"],
    "apoptosis": [*TINY_APOPTOSIS, "--max_iters", "60"],
    "heads": [*TINY_HEADS, "--max_iters", "60"],
}
MID = 30  # a step after the first epoch of every tiny configuration above


# Every run of this module, by name: (family, extra flags). They are independent
# CLI processes, so the module starts them a few at a time and the tests read
# their results (the slowest part of each is the interpreter's start-up).
RUNS: dict[str, tuple[str, tuple[str, ...]]] = {
    **{f"nan{step}-{f}": (f, ("--fault_nan_step", str(step))) for f in FAMILIES for step in (0, MID)},
    **{f"rollback-{f}": (f, ("--fault_nan_step", str(MID), "--on_diverge", "rollback",
                             "--rollback_lr_factor", "0.5")) for f in FAMILIES},
    "exception-plasticity": ("plasticity", ("--fault_exception_step", str(MID))),
    "lr_drill-seeds": ("seeds", ("--fault_lr_scale_step", "60")),
    "healthy-seeds": ("seeds", ()),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, Path]]:
    """(exit code, stderr, run dir) of every run in RUNS."""
    root = tmp_path_factory.mktemp("family_faults")

    def one(name: str) -> tuple[int, str, Path]:
        family, extra = RUNS[name]
        out = root / name
        r = run([*COMMON, *FAMILIES[family], *extra, "--output_dir", str(out)], timeout=300)
        run_dir = run_dir_in(out)
        assert run_dir is not None, r.stderr[-3000:]
        return r.returncode, r.stderr, run_dir

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(RUNS, pool.map(one, RUNS)))


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("nan_step", [0, MID], ids=["first_step", "mid_run"])
def test_nan_loss_diverges_in_every_family(results: dict, family: str, nan_step: int) -> None:
    rc, err, run_dir = results[f"nan{nan_step}-{family}"]
    assert rc == 3, err[-3000:]
    assert "Traceback" not in err
    doc = read_json(run_dir / "metrics.json")
    assert doc is not None and doc["status"] == "diverged", doc
    assert f"non-finite loss at step {nan_step}" == doc["error"]
    assert doc["metrics"]["steps"] == nan_step + 1 and doc["metrics"]["nonfinite_steps"] == 1
    events = read_jsonl(run_dir / "events.jsonl")
    assert [(e["event"], e["step"]) for e in events if e["event"] == "NonFiniteLoss"] == [("NonFiniteLoss", nan_step)]
    assert [e["status"] for e in events if e["event"] == "RunEnded"] == ["diverged"]
    # Every epoch before the divergence is kept, with finite numbers (no update ran on the NaN).
    rows = _history(run_dir)
    assert all(isinstance(r["train_loss"], float) for r in rows), rows
    if family != "seeds":  # families with artifacts write them at every end, diverged too
        assert any((run_dir / "artifacts").iterdir())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_nan_with_rollback_recovers_in_every_family(results: dict, family: str) -> None:
    rc, err, run_dir = results[f"rollback-{family}"]
    assert rc == 0, err[-3000:]
    doc = read_json(run_dir / "metrics.json")
    assert doc is not None and doc["status"] == "finished", doc
    assert doc["metrics"]["rollbacks"] == 1 and doc["metrics"]["nonfinite_steps"] == 1
    events = read_jsonl(run_dir / "events.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds.count("Rollback") == 1 and kinds.count("NonFiniteLoss") == 1
    assert kinds.index("Rollback") < kinds.index("NonFiniteLoss")  # rollbacks counted first
    rb = next(e for e in events if e["event"] == "Rollback")
    assert rb["step"] == MID and rb["to_step"] <= MID and rb["lr_scale"] == 0.5 and rb["attempt"] == 1
    # Re-run epochs replace their rows: one row per epoch, in order, to the end of the schedule.
    epochs = [r["epoch"] for r in _history(run_dir)]
    assert epochs == list(range(len(epochs))) and len(epochs) == doc["metrics"]["epochs"]
    # The learning rate after the rollback is half the configured one (char-level families: half their
    # schedule's rate at the last step: lr 3e-3, 10 warm-up steps, cosine to 10% at step 60).
    lr0 = _history(run_dir)[0]["learning_rate"] if rb["to_epoch"] > 0 else None
    last_lr = _history(run_dir)[-1]["learning_rate"]
    if family in ("apoptosis", "heads"):
        assert last_lr == pytest.approx(0.5 * (3e-4 + 0.5 * (1 + math.cos(math.pi * 49 / 50)) * 2.7e-3))
    elif lr0 is not None:
        assert last_lr == pytest.approx(lr0 * 0.5)


def test_exception_drill_fails_the_run(results: dict) -> None:
    rc, err, run_dir = results["exception-plasticity"]
    assert rc == 1, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("error: run failed: InjectedFault"), err[-2000:]
    doc = read_json(run_dir / "metrics.json")
    assert doc is not None and doc["status"] == "failed" and "InjectedFault" in doc["error"], doc
    assert "Traceback" in (run_dir / "run.log").read_text()  # the traceback is kept for the user


def test_learning_rate_drill_marks_the_loss_exploding(results: dict) -> None:
    rc, err, run_dir = results["lr_drill-seeds"]
    assert rc == 0, err[-3000:]
    rows = _history(run_dir)
    hit = rows[60 // 25]  # the epoch of the drill
    assert hit["loss_baseline_ratio"] > 5 and hit["loss_exploding_evaluations"] >= 1, hit
    assert all(r["loss_exploding_evaluations"] == 0 for r in rows[: 60 // 25]), rows
    assert "loss is exploding" in (run_dir / "run.log").read_text()


def test_healthy_run_never_counts_an_exploding_evaluation(results: dict) -> None:
    rc, err, run_dir = results["healthy-seeds"]
    assert rc == 0, err[-3000:]
    rows = _history(run_dir)
    assert max(r["loss_baseline_ratio"] for r in rows) < 2
    assert all(r["loss_exploding_evaluations"] == 0 for r in rows)

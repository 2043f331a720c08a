"""A seed that hurts is rolled back; without the guard the harm is counted and streaks.

Two real runs of the same configuration, whose children blend after 5%
reconstruction progress and learn the task at lr x 0.001, so each blend
distorts the frozen trunk's interface: with the guard (its defaults) and with
the guard off.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _e2e import read_json, read_jsonl, run, run_dir_in

HARM = ["--warm_up_epochs", "10", "--adaptation_epochs", "30", "--patience", "2", "--progress_thresh", "0.05",
        "--child_lr_scale", "0.001", "--probation_epochs", "1", "--metrics_port", "0", "--console", "off",
        "--no_tensorboard"]
GUARD_OFF = ["--blend_tolerance", "10", "--blend_abort", "1000"]


def _run(tmp: Path, *extra: str) -> tuple[dict, list[dict]]:
    proc = run([*HARM, *extra, "--output_dir", str(tmp)], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = run_dir_in(tmp)
    assert run_dir is not None
    return read_json(run_dir / "metrics.json") or {}, read_jsonl(run_dir / "events.jsonl")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    return _run(tmp_path_factory.mktemp("guarded"))


@pytest.fixture(scope="module")
def unguarded(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    return _run(tmp_path_factory.mktemp("unguarded"), *GUARD_OFF)


def impacts(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "StructuralImpact"]


def test_the_guard_rolls_back_what_hurt_and_the_run_ends_at_its_best(guarded: tuple[dict, list[dict]]) -> None:
    doc, events = guarded
    rollbacks = [e for e in events if e["event"] == "SeedTransition" and "rolled back" in e["reason"]]
    assert rollbacks, "no seed was rolled back"
    # Every rollback is also a structural change, measured: it brought the val loss back down.
    back = [e for e in impacts(events) if e["kind"] == "seed_rollback"]
    assert len(back) == len(rollbacks) and all(e["after"] < e["before"] for e in back)
    m = doc["metrics"]
    assert doc["status"] == "finished" and m["val_accuracy"] >= m["best_val_accuracy"] - 0.05
    assert max(e["streak"] for e in impacts(events)) < 3  # the alert's default limits
    assert max(e["net"] for e in impacts(events)) <= 0.05 and abs(impacts(events)[-1]["net"]) < 1e-6


def test_without_the_guard_harm_is_measured_and_streaks(unguarded: tuple[dict, list[dict]],
                                                        guarded: tuple[dict, list[dict]]) -> None:
    doc, events = unguarded
    assert not any(e["event"] == "SeedTransition" and e["to_state"] == "failed" for e in events)
    harmful = [e for e in impacts(events) if e["harmful"]]
    assert harmful and all(e["after"] > e["before"] * 1.02 for e in harmful)
    # Each blend worsens the loss, some by less than the tolerance: the net change catches it.
    assert impacts(events)[-1]["net"] > 0.05
    # The guarded run of the same configuration ends with a lower val loss.
    assert guarded[0]["metrics"]["val_loss"] < doc["metrics"]["val_loss"]


def test_every_structural_change_is_accounted_once(unguarded: tuple[dict, list[dict]]) -> None:
    _doc, events = unguarded
    changes = [(e["kind"], e["subject"]) for e in events if e["event"] == "StructuralChange"]
    settled = [(e["kind"], e["subject"]) for e in impacts(events)]
    assert sorted(changes) == sorted(settled)  # the finished run settles every change, exactly once
    assert {k for k, _ in changes} >= {"germinate", "blend_start", "blend_end", "fossilize"}

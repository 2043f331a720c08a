"""Results sink: metrics.json status, JSONL history, and rewinding on resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.sinks.results import ResultsSink
from engine.telemetry import events as ev
from engine.telemetry.bus import EventBus


def epoch(i: int) -> ev.EpochCompleted:
    return ev.EpochCompleted(i, "warm_up", 10 * i, {"val_loss": 1.0 / (i + 1)},
                             layers=(ev.LayerSignal("layers.0", "act", np.ones(3)),))


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_resume_rewinds_rows_of_epochs_not_in_the_checkpoint(tmp_path: Path) -> None:
    bus = EventBus()
    bus.attach(ResultsSink(tmp_path))
    bus.publish(ev.RunStarted("r", "seeds", {}, str(tmp_path), "cpu", 1, 5))
    for i in range(3):
        bus.publish(epoch(i))
    bus.publish(ev.SeedTransition("s", "layers.0", "training", "blending", 2))
    # killed here: the checkpoint holds epochs 0-1 only
    bus.close()
    bus = EventBus()
    bus.attach(ResultsSink(tmp_path))
    bus.publish(ev.RunStarted("r", "seeds", {}, str(tmp_path), "cpu", 1, 5, start_epoch=2))
    for i in range(2, 5):
        bus.publish(epoch(i))
    bus.publish(ev.RunEnded("r", "finished", {"epochs": 5.0}))
    bus.close()
    assert [r["epoch"] for r in lines(tmp_path / "history.jsonl")] == [0, 1, 2, 3, 4]
    assert [r["epoch"] for r in lines(tmp_path / "neurons.jsonl")] == [0, 1, 2, 3, 4]
    assert [r["event"] for r in lines(tmp_path / "events.jsonl")] == ["RunEnded"]
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["status"] == "finished" and doc["metrics"] == {"epochs": 5.0}


def test_metrics_json_carries_run_id_and_config_hash(tmp_path: Path) -> None:
    bus = EventBus()
    bus.attach(ResultsSink(tmp_path))
    bus.publish(ev.RunStarted("abc123-0f0f0f", "seeds", {}, str(tmp_path), "cpu", 1, 5, config_hash="abc123"))
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert (doc["run_id"], doc["config_hash"], doc["status"]) == ("abc123-0f0f0f", "abc123", "running")
    bus.publish(ev.RunEnded("abc123-0f0f0f", "finished", {"epochs": 5.0}))
    bus.close()
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert (doc["run_id"], doc["config_hash"], doc["status"]) == ("abc123-0f0f0f", "abc123", "finished")

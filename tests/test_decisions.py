"""Milestone and Decision events: checked where a family makes them, and read back from
every sink that keeps them in its real format: ``decisions.jsonl`` and ``events.jsonl``
(also after a SIGKILL, and rewound on resume and rollback), TensorBoard's text plugin
(EventAccumulator) and an MLflow file store (MlflowClient)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import require_module

from engine.sinks.results import ResultsSink
from engine.telemetry import events as ev
from engine.telemetry.bus import EventBus

ROOT = Path(__file__).resolve().parent.parent


def _payload(round_no: int) -> dict[str, Any]:
    """What a heads decision round records: scores per layer and head, the action and its outcome."""
    return {"round": round_no, "action": "prune", "outcome": "kept",
            "importance": {"blocks.0.attn": {"importance": [0.1, 0.7, 0.7, 0.1], "entropy": [2.1, 0.4, 1.0, 2.7]}},
            "changes": [{"layer": "blocks.0.attn", "pruned_heads": [0, 3]}],
            "val_loss_before": 1.9, "val_loss_after": 1.95, "reference_val_loss": None, "note": 'say "hi"\n'}


def _events() -> list[Any]:
    return [ev.Milestone(30, 2, "warmup_stable", "relative slope 0.031 < 0.05"),
            ev.Decision(40, 3, "head_prune", _payload(1)),
            ev.Decision(70, 6, "head_prune", _payload(2)),
            ev.Decision(100, 9, "head_clone", {"round": 3, "cloned_head": 1})]


def _publish(bus: EventBus, run_dir: Path, start_epoch: int = 0, items: list[Any] | None = None) -> None:
    bus.publish(ev.RunStarted("r1", "heads", {}, str(run_dir), "cpu", 10, 10, start_epoch=start_epoch,
                              phases=("train",)))
    for item in _events() if items is None else items:
        bus.publish(item)
        bus.publish(ev.EpochCompleted(item.epoch, "train", item.step, {"val_loss": 1.0}))
    bus.publish(ev.RunEnded("r1", "finished", {}))


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- the events themselves --------------------------------------------------------

def test_milestone_name_is_bounded() -> None:
    ev.Milestone(0, 0, "warmup_stable")
    ev.Milestone(0, 0, "pruning/stopped", "free text: anything goes here\n")
    for bad in ("", "Warmup Stable", "../up", "/abs", "a" * (ev.MAX_TEXT_TAG + 1), "warmup\n"):
        with pytest.raises(ValueError, match="milestone name"):
            ev.Milestone(0, 0, bad)


def test_decision_kind_is_one_word() -> None:
    for bad in ("", "head/prune", "Head_Prune", "head-prune", "../x", "a" * (ev.MAX_TEXT_TAG + 1)):
        with pytest.raises(ValueError, match="decision kind"):
            ev.Decision(0, 0, bad, {})


@pytest.mark.parametrize("payload, error", [
    ({"loss": float("nan")}, "not plain JSON"),
    ({"scores": [1.0, float("inf")]}, "not plain JSON"),
    ({"score": np.float32(0.5)}, "not plain JSON"),
    ({"heads": np.array([1, 2])}, "not plain JSON"),
    ({"by_head": {0: 0.5}}, "key 0 is not a string"),
    ({"rounds": [{("a", 1): 2}]}, "is not a string"),
    ({"blob": "x" * 1_000_001}, "bytes"),
])
def test_decision_payload_must_be_plain_json(payload: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        ev.Decision(5, 0, "head_prune", payload)


def test_decision_payload_is_a_snapshot() -> None:
    scores = {"importance": [0.5, 0.5], "pairs": (1, 2)}
    with pytest.raises(TypeError, match="dict"):
        ev.Decision(5, 0, "head_prune", [scores])  # type: ignore[arg-type]
    d = ev.Decision(5, 0, "head_prune", scores)
    scores["importance"].append(9.0)  # the family reuses its dict: what was decided stays
    assert d.payload == {"importance": [0.5, 0.5], "pairs": [1, 2]}
    assert d.record() == {"epoch": 0, "step": 5, "kind": "head_prune", "payload": d.payload}


# -- results files ---------------------------------------------------------------------

def test_results_decisions_jsonl_and_milestones_in_events(tmp_path: Path) -> None:
    bus = EventBus(strict=True)
    bus.attach(ResultsSink(tmp_path))
    _publish(bus, tmp_path)
    bus.close()
    decisions = [e for e in _events() if isinstance(e, ev.Decision)]
    assert _rows(tmp_path / "decisions.jsonl") == [d.record() for d in decisions]
    (milestone,) = [r for r in _rows(tmp_path / "events.jsonl") if r["event"] == "Milestone"]
    assert milestone == {"event": "Milestone", "step": 30, "epoch": 2, "name": "warmup_stable",
                         "detail": "relative slope 0.031 < 0.05"}
    assert not [r for r in _rows(tmp_path / "events.jsonl") if r["event"] == "Decision"]  # its own file


def test_results_resume_and_rollback_rewind_decisions(tmp_path: Path) -> None:
    bus = EventBus(strict=True)
    bus.attach(ResultsSink(tmp_path))
    _publish(bus, tmp_path)  # decisions of epochs 3, 6 and 9; the checkpoint holds epochs 0-6 only
    bus.close()
    again = ev.Decision(100, 9, "head_clone", {"round": 3, "cloned_head": 2})
    bus = EventBus(strict=True)
    bus.attach(ResultsSink(tmp_path))
    _publish(bus, tmp_path, start_epoch=7, items=[again])
    bus.close()
    rows = _rows(tmp_path / "decisions.jsonl")
    assert [(r["epoch"], r["payload"]["round"]) for r in rows] == [(3, 1), (6, 2), (9, 3)]
    assert _rows(tmp_path / "decisions.jsonl")[-1]["payload"]["cloned_head"] == 2
    # A rollback to epoch 3 drops the rows of epochs 3 on (they run again), milestones before it stay.
    bus = EventBus(strict=True)
    bus.attach(ResultsSink(tmp_path))
    bus.publish(ev.Rollback(step=75, epoch=7, to_step=30, to_epoch=3, attempt=1, max_rollbacks=3, lr_scale=0.5,
                            value=float("nan")))
    bus.close()
    assert _rows(tmp_path / "decisions.jsonl") == []
    names = [r.get("name") for r in _rows(tmp_path / "events.jsonl") if r["event"] == "Milestone"]
    assert names == ["warmup_stable"]  # epoch 2, before the rollback's target: kept, once


def test_results_decision_rows_survive_sigkill(tmp_path: Path) -> None:
    """Each decision row is flushed when written: a run killed right after keeps it."""
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from engine.sinks.results import ResultsSink
        from engine.telemetry import events as ev
        from engine.telemetry.bus import EventBus
        bus = EventBus(strict=True)
        bus.attach(ResultsSink({str(tmp_path)!r}))
        bus.publish(ev.Milestone(6, 0, "warmup_stable", "kept too"))
        bus.publish(ev.Decision(7, 0, "head_prune", {{"pruned": [1], "score": 0.25}}))
        os.kill(os.getpid(), {int(signal.SIGKILL)})
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert _rows(tmp_path / "decisions.jsonl") == [
        {"epoch": 0, "step": 7, "kind": "head_prune", "payload": {"pruned": [1], "score": 0.25}}]
    assert [r["name"] for r in _rows(tmp_path / "events.jsonl")] == ["warmup_stable"]


# -- TensorBoard -------------------------------------------------------------------------

def test_tensorboard_decisions_and_milestones(tmp_path: Path) -> None:
    require_module("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from engine.sinks.tensorboard import TensorBoardSink

    bus = EventBus(strict=True)
    bus.attach(TensorBoardSink(tmp_path / "tb"))
    _publish(bus, tmp_path)
    bus.close()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    assert {"decisions/head_prune", "decisions/head_clone", "events/text_summary"} <= set(
        acc.PluginTagToContent("text"))
    rounds = acc.Tensors("decisions/head_prune")
    assert [e.step for e in rounds] == [3, 6]  # the epoch axis every tag shares
    for event, (round_no, step) in zip(rounds, ((1, 40), (2, 70))):
        proto = event.tensor_proto
        assert not proto.tensor_shape.dim  # a scalar string: markdown, not a table
        head, _, block = proto.string_val[0].decode("utf-8").partition("\n\n")
        assert head == f"step {step}:"
        lines = block.split("\n")
        assert all(line.startswith("    ") for line in lines)  # a code block: JSON shown as it is
        assert json.loads("\n".join(line[4:] for line in lines)) == _payload(round_no)
    assert acc.SummaryMetadata("decisions/head_prune").display_name == "head_prune"
    log = [e.tensor_proto.string_val[0].decode("utf-8") for e in acc.Tensors("events/text_summary")]
    assert "epoch 2, step 30: milestone `warmup_stable`: relative slope 0.031 < 0.05" in log


# -- MLflow ------------------------------------------------------------------------------

@pytest.fixture
def mlflow_env(monkeypatch: pytest.MonkeyPatch) -> Any:
    mlflow = require_module("mlflow", "mlflow-skinny")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return mlflow


def test_mlflow_decision_artifacts_and_milestone_tags(tmp_path: Path, mlflow_env: Any) -> None:
    from engine.sinks.mlflow_sink import MlflowSink

    run_dir = tmp_path / "results" / "run-1"
    run_dir.mkdir(parents=True)
    sink = MlflowSink(run_dir, "run-1")
    bus = EventBus(strict=True)
    bus.attach(sink)
    _publish(bus, run_dir)
    bus.close()
    client = mlflow_env.MlflowClient(tracking_uri=sink.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("plasticity").experiment_id])
    files = [Path(f.path).name for f in client.list_artifacts(run.info.run_id, "decisions")]
    # Zero-padded steps: name order is run order (100 after 40 and 70).
    assert sorted(files) == ["00000040_head_prune.json", "00000070_head_prune.json", "00000100_head_clone.json"]
    local = client.download_artifacts(run.info.run_id, "decisions/00000070_head_prune.json", str(tmp_path))
    assert json.loads(Path(local).read_text(encoding="utf-8")) == {"epoch": 6, "step": 70, "kind": "head_prune",
                                                                   "payload": _payload(2)}
    assert run.data.tags["milestone.warmup_stable"] == "step 30: relative slope 0.031 < 0.05"
    found = client.search_runs([run.info.experiment_id], filter_string="tags.`milestone.warmup_stable` != ''")
    assert [r.info.run_id for r in found] == [run.info.run_id]


def test_mlflow_ignores_records_before_the_run_exists(tmp_path: Path, mlflow_env: Any) -> None:
    from engine.sinks.mlflow_sink import MlflowSink

    bus = EventBus(strict=True)
    bus.attach(MlflowSink(tmp_path / "run", "run"))
    bus.publish(ev.Decision(0, 0, "head_prune", {}))  # no RunStarted yet: nothing to log into
    bus.publish(ev.Milestone(0, 0, "warmup_stable"))
    bus.close()

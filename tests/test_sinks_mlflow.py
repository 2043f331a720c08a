"""MlflowSink: a real file store read back with MlflowClient, and an unreachable server."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require_module

mlflow = require_module("mlflow", "mlflow-skinny")  # skips locally, fails under CI=true

from engine.sinks.mlflow_sink import MlflowSink, flatten  # noqa: E402
from engine.telemetry import events as ev  # noqa: E402
from engine.telemetry.bus import EventBus  # noqa: E402

CONFIG = {"experiment": "seeds", "train": {"lr": 0.003, "optimizer": "adam"},
          "telemetry": {"mlflow": True, "neuron_topk": 3}, "family": {"blend_steps": 30, "hidden": [64, 32]},
          "note": "x" * 7000}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _epoch(epoch: int, val_loss: float = 0.5) -> ev.EpochCompleted:
    seed = ev.SeedSnapshot("s0", "fc1", "blending", alpha=0.25 * epoch, drift=0.01 * epoch,
                           health=1.0, train_loss=0.1)
    return ev.EpochCompleted(epoch=epoch, phase="adaptation", step=10 * epoch,
                             metrics={"train_loss": 1.0 / epoch, "val_loss": val_loss,
                                      "val_accuracy": 0.5 + 0.1 * epoch},
                             seeds=(seed,), layers=(ev.LayerSignal("fc1", "activation", np.arange(4.0)),),
                             plateau=epoch, patience=5, progress=epoch / 3, parameters=1234,
                             duration_seconds=0.5, samples_per_second=100.0 * epoch)


def _run(bus: EventBus, run_dir: Path, status: str = "finished") -> None:
    bus.publish(ev.RunStarted("r1", "seeds", CONFIG, str(run_dir), "cpu", 1234, 3, config_hash="c0ffee"))
    bus.publish(_epoch(1))
    bus.publish(_epoch(2, val_loss=float("nan")))  # non-finite values are skipped
    bus.publish(_epoch(3))
    bus.publish(ev.RunEnded("r1", status, {"val_accuracy": 0.8, "test_loss": float("inf")}))


def test_flatten_dotted_string_values() -> None:
    assert dict(flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "s", "f": None})) == {
        "a.b": "1", "a.c.d": "[1, 2]", "e": "s", "f": "null"}


def test_run_logged_to_default_file_store(tmp_path: Path) -> None:
    run_dir = tmp_path / "results" / "run-1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("lr: 0.003\n")
    (run_dir / "metrics.json").write_text("{}")
    (run_dir / "run.log").write_text("hello\n")
    (run_dir / "checkpoint.pt").write_bytes(b"\0")
    bus = EventBus(strict=True)
    sink = MlflowSink(run_dir, "run-1")
    assert sink.tracking_uri == (tmp_path / "results" / "mlruns").as_uri()
    bus.attach(sink)
    _run(bus, run_dir)
    bus.close()

    client = mlflow.MlflowClient(tracking_uri=sink.tracking_uri)
    exp = client.get_experiment_by_name("plasticity")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "run-1" and run.info.status == "FINISHED"
    assert run.data.tags["status"] == "finished" and run.data.tags["engine.run_id"] == "r1"
    assert run.data.tags["engine.config_hash"] == "c0ffee"
    params = run.data.params
    assert params["train.lr"] == "0.003" and params["train.optimizer"] == "adam"
    assert params["family.hidden"] == "[64, 32]" and params["telemetry.mlflow"] == "true"
    assert params["parameters"] == "1234" and len(params["note"]) == 6000

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    assert history("train_loss") == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert history("val_loss") == [(1, 0.5), (3, 0.5)]  # the NaN epoch is skipped
    assert history("samples_per_second") == [(1, 100.0), (2, 200.0), (3, 300.0)]
    assert history("seeds/s0/alpha") == [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert history("seeds/s0/drift") == [(1, 0.01), (2, 0.02), (3, 0.03)]
    assert history("final/val_accuracy") == [(3, 0.8)]
    assert "final/test_loss" not in run.data.metrics
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "metrics.json", "run.log"}


@pytest.mark.parametrize(("status", "expected"), [("diverged", "FAILED"), ("interrupted", "KILLED")])
def test_terminal_status_mapping(tmp_path: Path, status: str, expected: str) -> None:
    uri = (tmp_path / "store").as_uri()
    bus = EventBus(strict=True)
    sink = MlflowSink(tmp_path, "r", tracking_uri=uri, experiment_name="exp")
    bus.attach(sink)
    _run(bus, tmp_path, status)
    run = mlflow.MlflowClient(uri).get_run(sink.client.search_runs(
        [sink.client.get_experiment_by_name("exp").experiment_id])[0].info.run_id)
    assert run.info.status == expected and run.data.tags["status"] == status


def test_close_kills_an_open_run(tmp_path: Path) -> None:
    uri = (tmp_path / "store").as_uri()
    sink = MlflowSink(tmp_path, "r", tracking_uri=uri)
    bus = EventBus(strict=True)
    bus.attach(sink)
    bus.publish(ev.RunStarted("r1", "seeds", CONFIG, str(tmp_path), "cpu", 1, 3))
    run_id = sink.run_id
    bus.close()
    assert mlflow.MlflowClient(uri).get_run(run_id).info.status == "KILLED"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # released on exit: nothing listens there


def test_unreachable_server_is_isolated_by_the_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    start = time.monotonic()
    bus = EventBus()
    sink = MlflowSink(tmp_path, "r", tracking_uri=f"http://127.0.0.1:{_closed_port()}")
    bus.attach(sink)
    seen: list[object] = []
    for etype in (ev.RunStarted, ev.EpochCompleted, ev.RunEnded, ev.SinkFailed):
        bus.subscribe(etype, seen.append, name="recorder")
    _run(bus, tmp_path)
    bus.close()
    assert bus.failures == {"mlflow": 1}
    failed = [e for e in seen if isinstance(e, ev.SinkFailed)]
    assert len(failed) == 1 and failed[0].sink == "mlflow"
    assert [type(e).__name__ for e in seen if not isinstance(e, ev.SinkFailed)] == (
        ["RunStarted", "EpochCompleted", "EpochCompleted", "EpochCompleted", "RunEnded"])
    assert time.monotonic() - start < 10

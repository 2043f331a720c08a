"""Family measurements (MetricSamples) reach every sink, and family-only metrics stay with their family."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from engine.sinks.mlflow_sink import MlflowSink
from engine.sinks.prometheus import PrometheusSink
from engine.sinks.results import ResultsSink
from engine.sinks.tensorboard import TensorBoardSink
from engine.telemetry import events as ev
from engine.telemetry.bus import EventBus
from tests.test_sinks_prometheus import scrape, value


def samples(step: int, epoch: int, rank: float, replaced: float) -> ev.MetricSamples:
    return ev.MetricSamples(step, epoch, (
        ev.Sample("layer_effective_rank", ("layers.0",), rank),
        ev.Sample("units_replaced_total", ("layers.0",), replaced),
    ))


def epoch(i: int) -> ev.EpochCompleted:
    return ev.EpochCompleted(i, "stream", 10 * (i + 1), {"val_loss": 0.5})


def test_sample_names_and_labels_are_checked_against_the_catalog() -> None:
    with pytest.raises(KeyError, match="not in the catalog"):
        ev.Sample("layer_efective_rank", ("layers.0",), 1.0)
    with pytest.raises(ValueError, match="takes labels"):
        ev.Sample("layer_effective_rank", (), 1.0)


def test_prometheus_sets_gauges_and_counts_cumulative_totals_across_resume(port: int, tmp_path: Path) -> None:
    sink = PrometheusSink(port)
    bus = EventBus(strict=True)
    bus.attach(sink)
    try:
        bus.publish(ev.RunStarted("r1", "plasticity", {}, str(tmp_path), "cpu", 10, 4, phases=("stream",)))
        bus.publish(samples(5, 0, 7.5, 3.0))
        bus.publish(samples(10, 0, 6.0, 5.0))
        bus.publish(epoch(0))
        s = scrape(sink.port)
        assert value(s, "plasticity_layer_effective_rank", layer="layers.0") == 6.0
        assert value(s, "plasticity_units_replaced_total", layer="layers.0") == 5.0
        assert value(s, "plasticity_training_phase", phase="stream") == 1.0
        phases = {dict(lab)["phase"] for (n, lab) in s if n == "plasticity_training_phase"}
        assert phases == {"stream", "done"}  # the family's phases only
        # Seed-family metrics are not exported for other families.
        assert not [n for (n, _) in s if "seed" in n or "germination" in n or "plateau" in n]
    finally:
        bus.close()
    # A resumed process starts a fresh endpoint: the counter restarts from the
    # restored total and Prometheus sees a counter reset, which rate() handles.
    sink = PrometheusSink(port)
    bus = EventBus(strict=True)
    bus.attach(sink)
    try:
        bus.publish(ev.RunStarted("r1", "plasticity", {}, str(tmp_path), "cpu", 10, 4, start_epoch=1, phases=("stream",)))
        bus.publish(samples(15, 1, 5.0, 9.0))
        assert value(scrape(sink.port), "plasticity_units_replaced_total", layer="layers.0") == 9.0
    finally:
        bus.close()


def test_results_tensorboard_and_mlflow_receive_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    run_dir = tmp_path / "run"
    bus = EventBus(strict=True)
    bus.attach(ResultsSink(run_dir))
    bus.attach(TensorBoardSink(run_dir / "tb"))
    ml = MlflowSink(run_dir, "run")
    bus.attach(ml)
    bus.publish(ev.RunStarted("r1", "plasticity", {}, str(run_dir), "cpu", 10, 2, phases=("stream",)))
    bus.publish(samples(5, 0, 7.5, 3.0))
    bus.publish(samples(10, 0, 6.0, 5.0))
    bus.publish(epoch(0))
    bus.publish(samples(20, 1, 4.0, 8.0))
    bus.publish(epoch(1))
    bus.publish(ev.RunEnded("r1", "finished", {}))
    bus.close()

    rows = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    ranks = [(r["step"], r["value"]) for r in rows if r["metric"] == "layer_effective_rank"]
    assert ranks == [(5, 7.5), (10, 6.0), (20, 4.0)]  # every measurement with its step
    assert rows[0]["labels"] == ["layers.0"] and rows[0]["epoch"] == 0

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    # One value per epoch (the epoch's latest), on the epoch axis shared by every tag.
    got = [(p.step, p.value) for p in acc.Scalars("family/layer_effective_rank/layers.0")]
    assert got == [(0, 6.0), (1, 4.0)]

    client = mlflow.MlflowClient(tracking_uri=ml.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("plasticity").experiment_id])
    hist = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "units_replaced_total/layers.0"))
    assert hist == [(0, 5.0), (1, 8.0)]

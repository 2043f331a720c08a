"""Prometheus sink: values as scraped over real HTTP, deferred step/epoch export."""

from __future__ import annotations

from pathlib import Path

import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port

from engine.sinks.prometheus import PrometheusSink
from engine.telemetry import events as ev
from engine.telemetry.bus import EventBus


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body) for s in fam.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    want = {"run_id": "r1", **labels}
    hits = [v for (n, lab), v in samples.items() if n == name and all(dict(lab).get(k) == x for k, x in want.items())]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


def test_layer_summaries_steps_and_status(port: int, tmp_path: Path) -> None:
    sink = PrometheusSink(port, sink_names=("results",), topk=2)
    bus = EventBus()
    bus.attach(sink)
    try:
        bus.publish(ev.RunStarted("r1", "seeds", {}, str(tmp_path), "cpu", 123, 10))
        values = np.array([0.0, 0.0, 0.3, 1.0, 2.0, 5.0, 0.7])
        for step in range(1, 8):
            bus.publish(ev.StepCompleted(step, 0.5, True, 1000.0 + step))
        seeds = (ev.SeedSnapshot("l0_s0", "layers.0", "blending", 0.4, 0.1, 0.2, 0.01),)
        bus.publish(ev.EpochCompleted(0, "adaptation", 7, {"val_accuracy": 0.8, "val_loss": 0.4},
                                      seeds, (ev.LayerSignal("layers.0", "activation_abs_mean", values),), 2, 5, 0.1, 123, 0.5, 14.0))
        s = scrape(sink.port)
        assert value(s, "plasticity_steps_total") == 7.0  # deferred to the scrape, not lost
        assert value(s, "plasticity_last_step_timestamp_seconds") == 1007.0
        assert value(s, "plasticity_epochs_total") == 1.0
        for q in ("0", "0.25", "0.5", "0.75", "1"):
            got = value(s, "plasticity_neuron_activation_quantile", layer="layers.0", quantile=q)
            assert got == pytest.approx(float(np.quantile(values, float(q))))
        assert value(s, "plasticity_neuron_activation_topk", layer="layers.0", rank="1") == 5.0
        assert value(s, "plasticity_neuron_activation_topk", layer="layers.0", rank="2") == 2.0
        assert value(s, "plasticity_layer_dead_units", layer="layers.0") == 2.0
        assert value(s, "plasticity_layer_units", layer="layers.0") == 7.0
        assert value(s, "plasticity_seed_state", seed="l0_s0", layer="layers.0", state="blending") == 1.0
        assert value(s, "plasticity_seed_state", seed="l0_s0", layer="layers.0", state="active") == 0.0
        assert value(s, "plasticity_training_phase", phase="adaptation") == 1.0
        bus.publish(ev.StepCompleted(8, float("nan"), False, 1010.0))
        bus.publish(ev.NonFiniteLoss(7, 1, float("nan")))
        bus.publish(ev.RunEnded("r1", "diverged"))
        s = scrape(sink.port)
        assert value(s, "plasticity_nonfinite_loss_steps_total") == 1.0
        assert value(s, "plasticity_steps_total") == 8.0
        assert value(s, "plasticity_run_status", status="diverged") == 1.0
        assert value(s, "plasticity_run_status", status="running") == 0.0
        assert value(s, "plasticity_training_phase", phase="done") == 1.0
    finally:
        bus.close()


def test_counters_stay_cumulative_across_a_resume(port: int, tmp_path: Path) -> None:
    sink = PrometheusSink(port)
    bus = EventBus()
    bus.attach(sink)
    try:
        bus.publish(ev.RunStarted("r1", "seeds", {}, str(tmp_path), "cpu", 10, 10, start_epoch=4, germinations=2))
        bus.publish(ev.StepCompleted(101, 0.1, True, 5.0))  # the trainer's absolute step count
        bus.publish(ev.EpochCompleted(4, "adaptation", 101, {}))
        s = scrape(sink.port)
        assert value(s, "plasticity_epochs_total") == 5.0
        assert value(s, "plasticity_germinations_total") == 2.0
        assert value(s, "plasticity_steps_total") == 101.0
    finally:
        bus.close()


def test_counters_never_go_below_what_an_earlier_process_exported(port: int, tmp_path: Path) -> None:
    """A resumed process starts at the killed one's high-water marks, not at the checkpoint."""
    first = PrometheusSink(port)
    bus = EventBus()
    bus.attach(first)
    try:
        bus.publish(ev.RunStarted("r1", "plasticity", {}, str(tmp_path), "cpu", 10, 10, phases=("stream",)))
        bus.publish(ev.StepCompleted(100, 0.1, True, 5.0))
        bus.publish(ev.MetricSamples(100, 3, (ev.Sample("units_replaced_total", ("layers.0",), 7.0),)))
        bus.publish(ev.NonFiniteLoss(100, 3, float("nan")))
        assert value(scrape(first.port), "plasticity_steps_total") == 100.0  # the scrape records the marks
    finally:
        bus.close()
    second = PrometheusSink(free_port())
    bus = EventBus()
    bus.attach(second)
    try:  # the checkpoint was at step 50, epoch 2, with 3 units replaced
        bus.publish(ev.RunStarted("r1", "plasticity", {}, str(tmp_path), "cpu", 10, 10, start_epoch=2,
                                  phases=("stream",), start_step=50))
        bus.publish(ev.StepCompleted(80, 0.1, True, 6.0))
        bus.publish(ev.MetricSamples(80, 2, (ev.Sample("units_replaced_total", ("layers.0",), 5.0),)))
        s = scrape(second.port)
        assert value(s, "plasticity_steps_total") == 100.0  # flat while the run catches up, never back
        assert value(s, "plasticity_units_replaced_total", layer="layers.0") == 7.0
        # Incidents are per process: the resumed attempt has had no non-finite step.
        assert value(s, "plasticity_nonfinite_loss_steps_total") == 0.0
        bus.publish(ev.StepCompleted(130, 0.1, True, 7.0))
        assert value(scrape(second.port), "plasticity_steps_total") == 130.0
    finally:
        bus.close()

"""TensorBoardSink: events written through a real bus, read back from the event files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import require_module

require_module("tensorboard")  # skips locally, fails under CI=true

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from engine.sinks.tensorboard import TensorBoardSink  # noqa: E402
from engine.telemetry import events as ev  # noqa: E402
from engine.telemetry.bus import EventBus  # noqa: E402


def _epoch(epoch: int) -> ev.EpochCompleted:
    seed = ev.SeedSnapshot("s0", "fc1", "blending", alpha=0.25 * epoch, drift=0.01 * epoch,
                           health=1.5, train_loss=0.5 / epoch)
    layer = ev.LayerSignal("fc1", "activation", np.arange(8, dtype=np.float64) * epoch)
    return ev.EpochCompleted(epoch=epoch, phase="adaptation", step=10 * epoch,
                             metrics={"train_loss": 1.0 / epoch, "val_accuracy": 0.5 + 0.1 * epoch},
                             seeds=(seed,), layers=(layer,), plateau=epoch, patience=5,
                             progress=epoch / 3, parameters=1234, duration_seconds=0.5,
                             samples_per_second=100.0 * epoch)


def _load(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_scalars_histograms_and_text_round_trip(tmp_path: Path) -> None:
    bus = EventBus(strict=True)
    sink = TensorBoardSink(tmp_path / "tb", histogram_every=1)
    bus.attach(sink)
    bus.publish(ev.RunStarted("r1", "seeds", {"train": {"lr": 0.003}}, str(tmp_path), "cpu", 1234, 3))
    for epoch in (1, 2, 3):
        bus.publish(_epoch(epoch))
    bus.publish(ev.SeedTransition("s0", "fc1", "blending", "active", epoch=3, reason="alpha reached 1"))
    bus.publish(ev.NonFiniteLoss(step=31, epoch=3, value=float("nan")))
    bus.publish(ev.RunEnded("r1", "finished", {"val_accuracy": 0.8}))
    bus.close()

    acc = _load(tmp_path / "tb")
    tags = acc.Tags()

    def series(tag: str) -> tuple[list[int], list[float]]:
        points = acc.Scalars(tag)
        return [p.step for p in points], [p.value for p in points]

    def check(tag: str, values: list[float]) -> None:
        steps, got = series(tag)
        assert steps == [1, 2, 3], tag
        assert got == pytest.approx(values, rel=1e-6), tag  # stored as float32

    check("metrics/train_loss", [1.0, 0.5, 1 / 3])
    check("metrics/val_accuracy", [0.6, 0.7, 0.8])
    check("run/samples_per_second", [100.0, 200.0, 300.0])
    check("run/plateau", [1, 2, 3])
    check("run/parameters", [1234, 1234, 1234])
    check("seeds/s0/alpha", [0.25, 0.5, 0.75])
    assert {"seeds/s0/drift", "seeds/s0/health", "seeds/s0/train_loss",
            "run/duration_seconds", "run/progress"} <= set(tags["scalars"])

    hist = acc.Histograms("neurons/fc1/activation")
    assert [h.step for h in hist] == [1, 2, 3]
    last = hist[-1].histogram_value
    assert (last.min, last.max, last.num, last.sum) == (0.0, 21.0, 8.0, 84.0)  # arange(8) * 3

    texts = [t.tensor_proto.string_val[0].decode() for t in acc.Tensors("events/text_summary")]
    assert any("s0" in t and "blending -> active" in t for t in texts)
    assert any("non-finite loss nan" in t for t in texts)
    assert any("ended: finished" in t and "val_accuracy=0.8" in t for t in texts)
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"lr": 0.003' in config


def test_nonfinite_neuron_values_do_not_break_histograms(tmp_path: Path) -> None:
    bus = EventBus(strict=True)
    sink = TensorBoardSink(tmp_path, histogram_every=1)
    bus.attach(sink)
    values = np.array([1.0, np.nan, np.inf, 3.0])
    bus.publish(ev.EpochCompleted(1, "warm_up", 5, {"train_loss": float("nan")},
                                  layers=(ev.LayerSignal("fc1", "activation", values),
                                          ev.LayerSignal("fc2", "activation", np.array([])))))
    bus.close()
    acc = _load(tmp_path)
    assert acc.Histograms("neurons/fc1/activation")[0].histogram_value.num == 2.0
    assert "neurons/fc2/activation" not in acc.Tags()["histograms"]
    assert np.isnan(acc.Scalars("metrics/train_loss")[0].value)


def test_missing_backend_raises_sink_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys

    from engine.errors import SinkUnavailableError

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    with pytest.raises(SinkUnavailableError, match="pip install tensorboard"):
        TensorBoardSink(tmp_path)


def test_histograms_only_every_n_epochs(tmp_path: Path) -> None:
    bus = EventBus()
    sink = TensorBoardSink(tmp_path, histogram_every=3)
    bus.attach(sink)
    layer = ev.LayerSignal("layers.0", "activation_abs_mean", np.arange(8.0))
    for epoch in range(7):
        bus.publish(ev.EpochCompleted(epoch, "warm_up", epoch * 10, {"val_loss": 1.0}, layers=(layer,)))
    bus.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0}).Reload()
    assert [h.step for h in acc.Histograms("neurons/layers.0/activation_abs_mean")] == [0, 3, 6]
    assert [s.step for s in acc.Scalars("metrics/val_loss")] == list(range(7))

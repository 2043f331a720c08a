"""ConsoleSink: plain lines through the ``engine.console`` logger, and the Rich live view."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from rich.console import Console

from engine.errors import ConfigError
from engine.sinks.console import ConsoleSink
from engine.telemetry import events as ev
from engine.telemetry.bus import EventBus


def _epoch(epoch: int, state: str = "training") -> ev.EpochCompleted:
    seed = ev.SeedSnapshot("s0", "fc1", state, alpha=0.25 * epoch, drift=0.125, health=1.0, train_loss=0.1)
    dormant = ev.SeedSnapshot("s1", "fc2", "dormant", alpha=0.0, drift=0.0, health=1.0, train_loss=0.0)
    return ev.EpochCompleted(
        epoch=epoch, phase="warm_up" if epoch == 1 else "adaptation", step=10 * epoch,
        metrics={"train_loss": 0.5 / epoch, "val_loss": 0.75, "val_accuracy": 0.8125,
                 "best_val_accuracy": 0.875, "grad_norm": 1.5, "learning_rate": 0.003},
        seeds=(seed, dormant), layers=(ev.LayerSignal("fc1", "activation", np.arange(4.0)),),
        plateau=2, patience=5, progress=epoch / 3, parameters=1234,
        duration_seconds=1.25, samples_per_second=4321.0)


def _drive(bus: EventBus) -> None:
    bus.publish(ev.RunStarted("r1", "seeds", {}, "/tmp/r1", "cpu", 1234, 3))
    for step in range(1, 51):
        bus.publish(ev.StepCompleted(step, 0.5, True, 0.0))
    bus.publish(_epoch(1))
    bus.publish(ev.SeedTransition("s0", "fc1", "training", "blending", epoch=2, reason="loss converged"))
    bus.publish(_epoch(2, "blending"))
    bus.publish(ev.NonFiniteLoss(step=51, epoch=2, value=float("inf")))
    bus.publish(ev.Milestone(step=52, epoch=2, name="warmup_stable", detail="val loss 0.75 stable"))
    bus.publish(ev.Decision(step=53, epoch=2, kind="head_prune",
                            payload={"round": 1, "outcome": "kept", "val_loss_after": 1.234567,
                                     "importance": {"blocks.0.attn": [0.5, 0.5]}}))
    bus.publish(ev.RunEnded("r1", "finished", {"val_accuracy": 0.8125}))


def test_plain_mode_logs_one_line_per_epoch(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    bus = EventBus(strict=True)
    sink = ConsoleSink("auto", stream=stream)  # a StringIO is not a terminal
    assert sink.mode == "plain" and ev.StepCompleted not in sink.handlers()
    bus.attach(sink)
    with caplog.at_level(logging.INFO, logger="engine.console"):
        _drive(bus)
        bus.close()
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "engine.console"]
    assert lines == [
        (logging.INFO, "run r1 (seeds) on cpu: 1,234 parameters, 3 epochs"),
        (logging.INFO, "epoch 2/3 [warm_up] train_loss=0.5000 val_loss=0.7500 val_acc=81.25% "
                       "best=87.50% grad=1.5 lr=3.00e-03 4,321 samples/s 1.25s plateau 2/5 "
                       "seeds s0:training@0.25"),
        (logging.INFO, "epoch 3: seed s0 on fc1 training -> blending (loss converged)"),
        (logging.INFO, "epoch 3/3 [adaptation] train_loss=0.2500 val_loss=0.7500 val_acc=81.25% "
                       "best=87.50% grad=1.5 lr=3.00e-03 4,321 samples/s 1.25s plateau 2/5 "
                       "seeds s0:blending@0.50"),
        (logging.WARNING, "epoch 3, step 51: non-finite loss inf"),
        (logging.INFO, "epoch 3, step 52: warmup stable: val loss 0.75 stable"),
        (logging.INFO, "epoch 3, step 53: head prune (outcome kept, round 1, val_loss_after 1.235)"),
        (logging.INFO, "run r1 finished val_accuracy=0.8125"),
    ]
    assert stream.getvalue() == ""  # plain mode never writes to the stream itself


def test_rich_mode_renders_progress_metrics_and_seeds() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    bus = EventBus(strict=True)
    sink = ConsoleSink("auto", {"warm_up": 1, "adaptation": 2}, stream=console)
    assert sink.mode == "rich" and ev.StepCompleted in sink.handlers()
    bus.attach(sink)
    _drive(bus)
    bus.close()
    text = out.getvalue()
    assert sink.steps == 50
    for expected in ("run r1", "warm_up", "adaptation", "1/1", "1/2",  # progress bars
                     "0.2500", "0.7500", "81.25%", "87.50%", "4,321", "1.5", "3.00e-03", "2/5",
                     "blending", "0.50", "0.125", "dormant", "s1", "fc2",  # seeds table
                     "seed s0 on fc1 training -> blending", "non-finite loss inf", "run r1 finished"):
        assert expected in text, expected


def test_rich_mode_survives_close_without_run() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    sink = ConsoleSink("rich", stream=console)
    sink.close()
    sink.close()


def test_invalid_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="console"):
        ConsoleSink("fancy")

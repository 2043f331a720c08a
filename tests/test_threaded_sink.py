"""ThreadedSink: order, off-thread handling, failure reporting through the bus, drain on close."""

from __future__ import annotations

import threading
from typing import Any, Callable

from engine.telemetry.bus import EventBus
from engine.telemetry.events import RunEnded, SinkFailed, StepCompleted
from engine.telemetry.threaded import ThreadedSink


class Recorder:
    """A sink that records (event, thread name) and can be told to fail."""

    name = "recorder"

    def __init__(self, fail_on: int = -1) -> None:
        self.seen: list[tuple[int, str]] = []
        self.fail_on = fail_on
        self.closed = False

    def handlers(self) -> dict[type, Callable[[Any], None]]:
        return {StepCompleted: self.on_step}

    def on_step(self, e: StepCompleted) -> None:
        if e.step == self.fail_on:
            raise OSError("disk full")
        self.seen.append((e.step, threading.current_thread().name))

    def close(self) -> None:
        self.closed = True


def step(i: int) -> StepCompleted:
    return StepCompleted(i, 0.5, True, 0.0)


def test_events_are_handled_in_order_off_the_publishing_thread() -> None:
    inner = Recorder()
    bus = EventBus()
    bus.attach(ThreadedSink(inner))
    for i in range(500):
        bus.publish(step(i))
    bus.close()  # drains the queue before closing the inner sink
    assert [s for s, _ in inner.seen] == list(range(500))
    assert {t for _, t in inner.seen} == {"sink-recorder"}
    assert inner.closed


def test_a_failure_is_reported_once_on_the_next_publish_and_disables_the_sink() -> None:
    inner = Recorder(fail_on=3)
    bus = EventBus()
    failures: list[SinkFailed] = []
    bus.subscribe(SinkFailed, failures.append)
    sink = ThreadedSink(inner)
    bus.attach(sink)
    for i in range(4):
        bus.publish(step(i))
    while sink.error is None:
        threading.Event().wait(0.01)
    for i in range(4, 10):
        bus.publish(step(i))
    bus.close()
    assert [s for s, _ in inner.seen] == [0, 1, 2]
    assert [f.sink for f in failures] == ["recorder"] and "disk full" in failures[0].error
    assert bus.failures["recorder"] == 1


def test_close_reports_a_failure_on_the_last_event(caplog: Any) -> None:
    class Last(Recorder):
        def handlers(self) -> dict[type, Callable[[Any], None]]:
            return {RunEnded: self.on_end}

        def on_end(self, e: RunEnded) -> None:
            raise OSError("upload failed")

    bus = EventBus()
    bus.attach(ThreadedSink(Last()))
    bus.publish(RunEnded("r", "finished"))
    bus.close()
    assert "upload failed" in caplog.text


def test_flush_reports_a_failure_on_the_last_event_before_the_end() -> None:
    # A sink that fails on the very last event would otherwise only be logged at
    # close, after the run's final state was served (sink_errors_total 0).
    bus = EventBus()
    failed: list[SinkFailed] = []
    bus.subscribe(SinkFailed, failed.append)
    bus.attach(ThreadedSink(Recorder(fail_on=3)))
    for i in range(1, 4):
        bus.publish(step(i))
    bus.flush(timeout=5)
    assert [f.sink for f in failed] == ["recorder"] and "disk full" in failed[0].error
    bus.flush(timeout=5)  # reported once, and the disabled sink is not flushed again
    assert len(failed) == 1
    bus.close()


def test_flush_of_a_healthy_sink_waits_for_its_queue() -> None:
    gate = threading.Event()
    inner = Recorder()
    original = inner.on_step
    inner.on_step = lambda e: (gate.wait(5), original(e))  # type: ignore[method-assign]
    sink = ThreadedSink(inner)
    bus = EventBus()
    bus.attach(sink)
    bus.publish(step(1))
    threading.Timer(0.2, gate.set).start()
    bus.flush(timeout=5)
    assert [s for s, _ in inner.seen] == [1]  # handled before flush returned
    bus.close()

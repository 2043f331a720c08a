"""Run a slow sink's handlers on a background thread.

TensorBoard (protobuf building, file I/O) and MLflow (HTTP to a tracking
server) must not stall the training loop, nor leak their latency into its
throughput. :class:`ThreadedSink` queues each event for a worker thread that
calls the real handler in order. A handler failure is kept and raised from the
*next* enqueue, on the training thread, so the bus reports, counts and disables
the sink exactly as it does for a synchronous one. The queue is bounded: a
sink that falls far behind slows training down (back-pressure) rather than
growing memory without limit.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from typing import Any, Callable

from engine.telemetry.bus import Sink

log = logging.getLogger(__name__)

_STOP = object()


class ThreadedSink:
    """Wraps ``sink``: same name and event types, handled on a worker thread."""

    def __init__(self, sink: Sink, max_queue: int = 4096, close_timeout: float = 60.0) -> None:
        self.inner = sink
        self.name = sink.name
        self.close_timeout = close_timeout
        self.error: BaseException | None = None
        self._reported = False
        self._queue: queue.Queue[Any] = queue.Queue(max_queue)
        self._thread = threading.Thread(target=self._work, name=f"sink-{sink.name}", daemon=True)
        self._thread.start()

    def handlers(self) -> dict[type, Callable[[Any], None]]:
        """The inner sink's event types, each enqueuing for the worker."""
        return {etype: functools.partial(self._enqueue, fn) for etype, fn in self.inner.handlers().items()}

    def _enqueue(self, fn: Callable[[Any], None], event: Any) -> None:
        if self.error is not None:
            self._reported = True
            raise self.error  # surfaces on the publishing thread, where the bus handles it
        self._queue.put((fn, event))

    def flush(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) for the queued events; raise a failure not yet reported.

        Called before the run's final state is served, so a sink that fails on
        the last events (e.g. a tracking server that was never reachable, on a
        run shorter than its first request) is still reported and counted.
        """
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)
        if self.error is not None and not self._reported:
            self._reported = True
            raise self.error

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, threading.Event):  # a flush marker: everything before it is handled
                item.set()
                continue
            if self.error is None:  # after a failure, drain without calling the sink
                fn, event = item
                try:
                    fn(event)
                except Exception as exc:  # noqa: BLE001 - reported via _enqueue / close
                    self.error = exc

    def close(self) -> None:
        """Let the worker finish the queued events (bounded), then close the sink."""
        self._queue.put(_STOP)
        self._thread.join(self.close_timeout)
        if self._thread.is_alive():
            log.error("telemetry sink %r did not finish within %.0fs; closing anyway", self.name,
                      self.close_timeout)
        elif self.error is not None and not self._reported:  # failed on the last event
            log.error("telemetry sink %r failed: %s", self.name, self.error)
        self.inner.close()

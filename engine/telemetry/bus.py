"""The event bus: the trainer publishes, sinks subscribe.

Dispatch is by exact event type (a dict lookup), so publishing an event nobody
listens to costs almost nothing. A sink that raises is reported once through
``logging`` and a :class:`SinkFailed` event, counted, and then skipped for the
rest of the run unless ``strict`` is set, in which case the error propagates.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Callable, Protocol

from engine.telemetry.events import SinkFailed

log = logging.getLogger(__name__)

Handler = Callable[[Any], None]


class Sink(Protocol):
    """A telemetry sink: a name, its handlers by event type, and ``close``."""

    name: str

    def handlers(self) -> dict[type, Handler]:
        """Event type -> handler."""
        ...

    def close(self) -> None:
        """Flush and release resources (called once, at shutdown)."""
        ...


class EventBus:
    """Synchronous publish/subscribe with per-sink fault isolation."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self._subs: dict[type, list[tuple[str, Handler]]] = defaultdict(list)
        self._sinks: list[Sink] = []
        self.failures: dict[str, int] = defaultdict(int)
        self._disabled: set[str] = set()

    def attach(self, sink: Sink) -> None:
        """Subscribe every handler of ``sink``."""
        self._sinks.append(sink)
        for etype, handler in sink.handlers().items():
            self._subs[etype].append((sink.name, handler))

    def subscribe(self, etype: type, handler: Handler, name: str = "anonymous") -> None:
        """Subscribe a single handler (used by tests and small observers)."""
        self._subs[etype].append((name, handler))

    def publish(self, event: Any) -> None:
        """Deliver ``event`` to every live subscriber of its type."""
        for name, handler in self._subs.get(type(event), ()):
            if name in self._disabled:
                continue
            try:
                handler(event)
            except Exception as exc:  # noqa: BLE001 - isolation is the point
                self._fail(name, exc)

    def _fail(self, name: str, exc: Exception) -> None:
        self.failures[name] += 1
        if self.strict:
            raise exc
        self._disabled.add(name)
        log.error("telemetry sink %r failed and is disabled for this run: %s", name, exc)
        self.publish(SinkFailed(sink=name, error=f"{type(exc).__name__}: {exc}"))

    def flush(self, timeout: float = 10.0) -> None:
        """Let sinks that buffer (threaded ones) catch up, reporting failures they hit."""
        for sink in self._sinks:
            flush = getattr(sink, "flush", None)
            if callable(flush) and sink.name not in self._disabled:
                try:
                    flush(timeout)
                except Exception as exc:  # noqa: BLE001 - isolation is the point
                    self._fail(sink.name, exc)

    def close(self) -> None:
        """Close every sink; a failing close is logged, never raised."""
        for sink in self._sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001
                log.error("telemetry sink %r failed to close: %s", sink.name, exc)

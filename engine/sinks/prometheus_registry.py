"""The Prometheus sink's registry plumbing: consistent collection and scrape tracking."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from engine.telemetry.catalog import MetricSpec


class ScrapeWatch:
    """A collector that yields nothing but records when the registry is scraped."""

    def __init__(self) -> None:
        self.count = 0
        self.last = 0.0
        self.cond = threading.Condition()

    def describe(self) -> list[Any]:
        return []  # keeps registration from calling collect()

    def collect(self) -> list[Any]:
        with self.cond:
            self.count += 1
            self.last = time.time()
            self.cond.notify_all()
        return []

    def wait_after(self, since: float, max_seconds: float) -> bool:
        """Block until a scrape later than ``since`` (unix time), at most ``max_seconds``."""
        deadline = time.time() + max_seconds
        with self.cond:
            while self.last <= since:
                remaining = deadline - time.time()
                if remaining <= 0:
                    return False
                self.cond.wait(remaining)
        return True


class ConsistentRegistry(CollectorRegistry):
    """A registry whose collection excludes updates (``update_lock``).

    Handlers hold the lock for a whole event, so a scrape never sees half an
    epoch: quantiles stay ordered, one-hot gauges have exactly one 1, and the
    epoch histogram count matches ``epochs_total``.
    """

    def __init__(self) -> None:
        super().__init__(auto_describe=True)
        self.update_lock = threading.Lock()
        self.before_collect: Callable[[], None] = lambda: None

    def collect(self) -> Iterator[Any]:
        with self.update_lock:
            self.before_collect()
            metrics = list(super().collect())
        return iter(metrics)


def make_metric(spec: MetricSpec, registry: CollectorRegistry) -> Any:
    """The prometheus_client metric for a catalog entry (counters without their ``_total``)."""
    name = spec.name.removesuffix("_total") if spec.kind == "counter" else spec.name
    if spec.kind == "counter":
        return Counter(name, spec.help, spec.labels, registry=registry)
    if spec.kind == "histogram":
        return Histogram(name, spec.help, spec.labels, registry=registry, buckets=spec.buckets)
    return Gauge(name, spec.help, spec.labels, registry=registry)

"""Prometheus sink: a private registry served over HTTP from a background thread.

All names come from :mod:`engine.telemetry.catalog`. Per-neuron signals are
reduced here to bounded per-layer series (quantiles, top-k by rank slot, dead
unit counts), so the series count per run is fixed by seeds x layers, never by
the number of neurons.
"""

from __future__ import annotations

import logging
import platform
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import numpy as np
from prometheus_client import disable_created_metrics, start_http_server

from engine import __version__
from engine.errors import ConfigError
from engine.telemetry import events as ev
from engine.sinks.counters import CounterLedger
from engine.sinks.prometheus_registry import ConsistentRegistry, ScrapeWatch, make_metric
from engine.sinks.prometheus_structural import StructuralExport
from engine.telemetry.catalog import BY_NAME, CATALOG, FAMILY_KINDS, PREFIX, NEURON_QUANTILES

log = logging.getLogger(__name__)

#: EpochCompleted.metrics key -> catalog short name (run_id label only).
#: The per-unit signal exported as quantiles, top-k and dead-unit counts.
ACTIVATION_SIGNAL = "activation_abs_mean"
_QS_ARRAY = np.array([float(q) for q in NEURON_QUANTILES])
_MAX_PENDING = 256  # epochs recorded but not yet exported
_SCALARS = {
    "train_loss": "train_loss",
    "val_loss": "val_loss",
    "val_accuracy": "val_accuracy_ratio",
    "best_val_accuracy": "best_val_accuracy_ratio",
    "grad_norm": "grad_norm",
    "learning_rate": "learning_rate",
    "germination_accuracy_threshold": "germination_accuracy_threshold_ratio",
    "loss_baseline_ratio": "loss_baseline_ratio",
    "loss_exploding_evaluations": "loss_exploding_evaluations",
}


#: Counters of one process's incidents, not carried to a resumed process (see CounterLedger.open).
PER_PROCESS = frozenset({"nonfinite_loss_steps_total", "rollbacks_total", "sink_errors_total",
                         "loss_explosions_total"})


class PrometheusSink:
    """Exports catalog metrics for one run on ``host:port``."""

    name = "prometheus"

    def __init__(self, port: int, host: str = "127.0.0.1", auto_port: bool = False,
                 sink_names: tuple[str, ...] = (), topk: int = 3) -> None:
        # Counters and histograms would also export ``*_created`` series, which
        # are not in the catalog and would break its series budget.
        disable_created_metrics()
        self.registry = ConsistentRegistry()
        self.m: dict[str, Any] = {s.name.removeprefix("plasticity_"): make_metric(s, self.registry) for s in CATALOG}
        self._watch = ScrapeWatch()
        self.registry.register(self._watch)  # type: ignore[arg-type]
        self._sink_names = sink_names
        self.topk = topk
        self._device = "cpu"
        self.run_id = ""
        self._experiment = ""
        self._phases: tuple[str, ...] = ev.PHASES
        self.counters = CounterLedger(self._c)  # every counter increment goes through it
        self.structural = StructuralExport(self._c, self.counters, self.m["structural_impact_info"])
        self._final_status = ""
        self._ended_at = 0.0
        self.host = host
        self._child: dict[str, Any] = {}
        # Hot-path events are only recorded here and turned into metric updates
        # when a scrape arrives (or the backlog is long): per-step telemetry then
        # costs the training loop an attribute store, not a locked update.
        self._last_step: ev.StepCompleted | None = None
        self._pending: deque[ev.EpochCompleted] = deque()
        self.registry.before_collect = self._before_scrape
        self.port, self._server = self._bind(port, host, auto_port)

    def _bind(self, port: int, host: str, auto_port: bool) -> tuple[int, Any]:
        last = 99 if auto_port else 0
        for candidate in range(port, min(port + last, 65535) + 1):
            try:
                server, _thread = start_http_server(candidate, addr=host, registry=self.registry)
                return candidate, server
            except socket.gaierror as exc:  # the host, not the port, is wrong
                raise ConfigError("metrics_host", host, f"cannot bind it ({exc.strerror}); "
                                  "use an address of this machine, e.g. 127.0.0.1 or 0.0.0.0") from None
            except OSError as exc:
                err = exc
        raise ConfigError(
            "metrics_port", port,
            f"{host}:{port} is busy ({err.strerror}); choose a free port with --metrics_port, "
            "--auto_port to take the next free one, or 0 to disable",
        )

    # -- handlers -----------------------------------------------------------
    def handlers(self) -> dict[type, Callable[[Any], None]]:
        """Event type -> handler.

        Steps and epochs are deferred to scrape time; the rare events apply at
        once, after the backlog, atomically with respect to scrapes.
        """
        table: dict[type, Callable[[Any], None]] = {
            ev.RunStarted: self._started, ev.SeedTransition: self._transition,
            ev.NonFiniteLoss: self._nonfinite, ev.SinkFailed: self._sink_failed,
            ev.RunEnded: self._ended, ev.MetricSamples: self._samples, ev.Rollback: self._rollback,
            ev.LossExplosion: self._explosion,
            ev.StructuralChange: lambda e: self.structural.change(e),
            ev.StructuralImpact: lambda e: self.structural.impact(e),
        }
        return {ev.StepCompleted: self._step, ev.EpochCompleted: self._epoch,
                **{etype: self._atomic(fn) for etype, fn in table.items()}}

    def _atomic(self, fn: Callable[[Any], None]) -> Callable[[Any], None]:
        lock = self.registry.update_lock

        def handler(event: Any) -> None:
            with lock:
                self._flush()  # keep event order: earlier epochs before this event
                fn(event)
        return handler

    def _step(self, e: ev.StepCompleted) -> None:
        self._last_step = e

    def _epoch(self, e: ev.EpochCompleted) -> None:
        self._pending.append(e)  # deque: safe against a concurrent popleft in _flush
        if len(self._pending) >= _MAX_PENDING:  # nobody scrapes: bound the backlog
            with self.registry.update_lock:
                self._flush()

    def _before_scrape(self) -> None:
        self._flush()
        self.counters.persist()  # before the answer: the marks always cover what was scraped

    def _flush(self) -> None:
        """Apply recorded steps and epochs to the metrics (caller holds the lock)."""
        while self._pending:
            self._apply_epoch(self._pending.popleft())
        step = self._last_step
        if step is not None:  # advancing to the same total again is a no-op
            self.counters.advance(("steps_total",), step.step)
            self._c("last_step_timestamp_seconds").set(step.timestamp)

    def _c(self, short: str, *values: str) -> Any:
        # Cached labelled child (run_id first): .labels() is the slow part of an update.
        key = (short, *values)
        child = self._child.get(key)
        if child is None:
            child = self._child[key] = self.m[short].labels(self.run_id, *values)
        return child

    def _started(self, e: ev.RunStarted) -> None:
        import torch  # version only; already imported by the trainer

        self.run_id = e.run_id
        self._device = e.device
        self._experiment = e.experiment
        self._phases = tuple(e.phases) + ("done",)
        self._child.clear()
        self.counters = CounterLedger(self._c)
        self.counters.open(Path(e.run_dir), PER_PROCESS)  # a resumed run continues its counters
        self.structural = StructuralExport(self._c, self.counters, self.m["structural_impact_info"])
        self.m["build_info"].labels(__version__, platform.python_version(), torch.__version__).set(1)
        self.m["run_info"].labels(e.run_id, e.experiment, e.device, e.config_hash).set(1)
        self._one_hot("run_status", ev.RUN_STATUSES, "running")
        # Counters are cumulative over the run, across resumes: at least the
        # restored totals, never below what an earlier process exported.
        self.counters.advance(("steps_total",), e.start_step)
        self.counters.advance(("epochs_total",), e.start_epoch)
        for short in ("nonfinite_loss_steps_total", "rollbacks_total", "loss_explosions_total"):
            self.counters.advance((short,), 0)  # exposed from the start
        if self._seeds_family:
            self.counters.advance(("germinations_total",), e.germinations)
            for state in ev.SEED_STATES:
                self.counters.advance(("seed_transitions_total", state), 0)
        for sink in self._sink_names:
            self.counters.advance(("sink_errors_total", sink), 0)
        train = e.config.get("train") or {}
        self._c("loss_exploding_patience_evaluations").set(float(train.get("explode_patience", 0)))
        self._c("loss_exploding_evaluations").set(0.0)
        self.structural.started(e.run_id, int(train.get("impact_streak", 0)), float(train.get("impact_net_limit", 0)),
                                FAMILY_KINDS.get(e.experiment, ()))
        self._c("model_parameters").set(e.parameters)
        self._c("training_progress_ratio").set(e.start_epoch / max(e.total_epochs, 1))
        self._c("last_step_timestamp_seconds").set(time.time())

    @property
    def _seeds_family(self) -> bool:
        return BY_NAME[f"{PREFIX}_germinations_total"].applies_to(self._experiment)

    def _samples(self, e: ev.MetricSamples) -> None:
        for smp in e.samples:
            if BY_NAME[f"{PREFIX}_{smp.metric}"].kind == "counter":  # cumulative total
                self.counters.advance((smp.metric, *smp.labels), smp.value)
            else:
                self._c(smp.metric, *smp.labels).set(smp.value)

    def _one_hot(self, short: str, values: tuple[str, ...], current: str, *extra: str) -> None:
        # The varying label is always the last one in the catalog.
        for v in values:
            self._c(short, *extra, v).set(1.0 if v == current else 0.0)

    def _nonfinite(self, e: ev.NonFiniteLoss) -> None:
        self.counters.bump(("nonfinite_loss_steps_total",))

    def _rollback(self, e: ev.Rollback) -> None:
        self.counters.bump(("rollbacks_total",))

    def _explosion(self, e: ev.LossExplosion) -> None:
        self.counters.bump(("loss_explosions_total",))

    def _apply_epoch(self, e: ev.EpochCompleted) -> None:
        self.counters.advance(("epochs_total",), e.epoch + 1)
        for key, short in _SCALARS.items():
            if key in e.metrics and BY_NAME[f"{PREFIX}_{short}"].applies_to(self._experiment):
                self._c(short).set(e.metrics[key])
        dev = e.metrics.get("device_memory_used_bytes")
        if dev is not None:
            self._c("device_memory_used_bytes", self._device).set(dev)
            self._c("device_memory_limit_bytes", self._device).set(e.metrics["device_memory_limit_bytes"])
        self._one_hot("training_phase", self._phases, e.phase)
        self._c("epoch_duration_seconds").observe(e.duration_seconds)
        self._c("samples_per_second").set(e.samples_per_second)
        self._c("training_progress_ratio").set(e.progress)
        self._c("model_parameters").set(e.parameters)
        if self._seeds_family:
            self._c("plateau_epochs").set(e.plateau)
            self._c("plateau_patience_epochs").set(e.patience)
        for s in e.seeds:
            self._one_hot("seed_state", ev.SEED_STATES, s.state, s.seed_id, s.layer)
            self._c("seed_alpha_ratio", s.seed_id, s.layer).set(s.alpha)
            self._c("seed_drift_ratio", s.seed_id, s.layer).set(s.drift)
            self._c("seed_health", s.seed_id, s.layer).set(s.health)
            self._c("seed_train_loss", s.seed_id, s.layer).set(s.train_loss)
        for sig in e.layers:
            if sig.signal == ACTIVATION_SIGNAL:  # other per-unit signals go to TensorBoard/artifacts
                self._layer(sig)

    def _layer(self, sig: ev.LayerSignal) -> None:
        v = np.asarray(sig.values, dtype=np.float64).ravel()  # [units]
        self._c("layer_units", sig.layer).set(v.size)
        self._c("layer_dead_units", sig.layer).set(int((v <= sig.dead_threshold).sum()))
        if v.size == 0:
            return
        ranked = np.sort(v)  # ascending: quantiles by interpolation, top-k from the end
        # Linear interpolation between order statistics (numpy's default
        # quantile method), done directly: np.quantile's overhead dominates
        # for layers of a few hundred units.
        pos = _QS_ARRAY * (v.size - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, v.size - 1)
        quantiles = ranked[lo] + (ranked[hi] - ranked[lo]) * (pos - lo)
        for q, val in zip(NEURON_QUANTILES, quantiles.tolist()):
            self._c("neuron_activation_quantile", sig.layer, q).set(val)
        for rank, val in enumerate(ranked[::-1][: self.topk].tolist(), start=1):
            self._c("neuron_activation_topk", sig.layer, str(rank)).set(val)

    def _transition(self, e: ev.SeedTransition) -> None:
        self.counters.bump(("seed_transitions_total", e.to_state))
        if e.to_state == "training":
            self.counters.bump(("germinations_total",))

    def _sink_failed(self, e: ev.SinkFailed) -> None:
        self.counters.bump(("sink_errors_total", e.sink))

    def _ended(self, e: ev.RunEnded) -> None:
        self._one_hot("run_status", ev.RUN_STATUSES, e.status)
        self._one_hot("training_phase", self._phases, "done")
        self._final_status = e.status
        self._ended_at = time.time()

    # -- lifecycle ----------------------------------------------------------
    def linger(self, max_seconds: float, hold_seconds: float = 0.0) -> bool:
        """Keep serving until one scrape has seen the run's end, at most ``max_seconds``.

        A run that ended badly (diverged, failed, interrupted) always waits,
        even if nothing scraped it yet: a run that diverges before its first
        scrape would otherwise vanish unseen and page nobody. A healthy finish
        waits only if something was scraping it (else nobody is watching).
        ``hold_seconds`` first serves unconditionally for that long after the
        end (so alerts on the final state stay active while they are routed).
        Ctrl-C ends the wait. Returns True if a post-end scrape was served.
        """
        ended = self._ended_at or time.time()
        must_be_seen = self._final_status in ("diverged", "failed", "interrupted")
        try:
            if hold_seconds > 0:
                time.sleep(max(0.0, ended + hold_seconds - time.time()))
            if max_seconds <= 0 or (self._watch.count == 0 and not must_be_seen):
                return self._watch.last > ended
            if self._watch.last <= ended:
                log.info("run %s: serving its final state until Prometheus scrapes it (at most %gs; "
                         "Ctrl-C skips)", self._final_status, max_seconds)
            if not self._watch.wait_after(ended, max_seconds):
                log.warning("no scrape saw the final state within %gs", max_seconds)
                return False
            return True
        except KeyboardInterrupt:
            log.warning("stopped waiting for a final scrape")
            return self._watch.last > ended

    def close(self) -> None:
        """Stop the HTTP server and free the port."""
        self._server.shutdown()
        self._server.server_close()

"""Results sink: ``metrics.json`` (latest/final status and metrics) and JSONL history.

``metrics.json`` is rewritten atomically after every epoch with status
``running``, so a run killed at any moment still leaves its last complete
numbers; ``history.jsonl`` gets one line per epoch, ``events.jsonl`` one line
per lifecycle event, ``neurons.jsonl`` the full per-neuron signals of every
layer each epoch (Prometheus only gets bounded per-layer summaries of them),
``samples.jsonl`` every family measurement (per-layer rank, per-class
error, ...) with the step it was taken at, ``text_samples.jsonl`` every
text the model generated (its own file: readers of ``samples.jsonl`` expect
one metric per row) and ``decisions.jsonl`` every structural decision with
the scores that drove it (milestones are lifecycle events: ``events.jsonl``).
JSONL files are flushed after each event, so a killed run keeps every row
written before it died, and rewound to the checkpoint's epoch on a resume or
rollback.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from engine.fsutil import atomic_write_text
from engine.telemetry import events as ev


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    # JSON has no NaN/Inf: write them as strings so files stay valid JSON.
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in d.items()}


def _epoch_of(line: str) -> float:
    """The ``epoch`` of a JSONL row; rows without one (or unreadable) sort first."""
    try:
        return float(json.loads(line).get("epoch", -1))
    except (ValueError, AttributeError, TypeError):
        return -1.0


class ResultsSink:
    """Writes the run's result files into ``run_dir``."""

    name = "results"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.doc: dict[str, Any] = {"status": "running", "metrics": {}, "error": ""}
        self._history = open(self.run_dir / "history.jsonl", "a", encoding="utf-8")
        self._events = open(self.run_dir / "events.jsonl", "a", encoding="utf-8")
        self._neurons = open(self.run_dir / "neurons.jsonl", "a", encoding="utf-8")
        self._samples = open(self.run_dir / "samples.jsonl", "a", encoding="utf-8")
        self._texts = open(self.run_dir / "text_samples.jsonl", "a", encoding="utf-8")
        self._decisions = open(self.run_dir / "decisions.jsonl", "a", encoding="utf-8")

    def handlers(self) -> dict[type, Callable[[Any], None]]:
        """Event type -> handler."""
        return {ev.RunStarted: self._started, ev.EpochCompleted: self._epoch,
                ev.SeedTransition: self._event, ev.NonFiniteLoss: self._event,
                ev.SinkFailed: self._event, ev.RunEnded: self._ended, ev.MetricSamples: self._measured,
                ev.Rollback: self._rolled_back, ev.LossExplosion: self._event,
                ev.StructuralChange: self._event, ev.StructuralImpact: self._event,
                ev.TextSample: self._text, ev.Milestone: self._event, ev.Decision: self._decision}

    def _write(self, final: bool = False) -> None:
        # Per-epoch rewrites skip fsync (the rename is atomic anyway); the final one syncs.
        text = json.dumps(self.doc, indent=2, sort_keys=True) + "\n"
        atomic_write_text(self.run_dir / "metrics.json", text, fsync=final)

    def _started(self, e: ev.RunStarted) -> None:
        if e.start_epoch > 0:
            self._rewind(e.start_epoch)
        # run_id is this launch (kept on resume); config_hash groups launches of one config.
        self.doc.update(run_id=e.run_id, config_hash=e.config_hash, experiment=e.experiment,
                        device=e.device, status="running")
        self._write()

    def _rewind(self, start_epoch: int) -> None:
        """On resume, drop rows of epochs the checkpoint does not contain.

        A run killed after publishing epoch k but before checkpointing it
        re-runs epoch k; without this its rows (and events of a partly run
        epoch) would appear twice. Rows without an epoch (e.g. an earlier
        RunEnded "interrupted") are history and stay.
        """
        for attr, name in (("_history", "history.jsonl"), ("_events", "events.jsonl"),
                           ("_neurons", "neurons.jsonl"), ("_samples", "samples.jsonl"),
                           ("_texts", "text_samples.jsonl"), ("_decisions", "decisions.jsonl")):
            getattr(self, attr).close()
            path = self.run_dir / name
            kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
                    if _epoch_of(line) < start_epoch]
            atomic_write_text(path, "".join(kept))
            setattr(self, attr, open(path, "a", encoding="utf-8"))

    def _rolled_back(self, e: ev.Rollback) -> None:
        # The epochs from to_epoch on run again: their rows go, as on a resume.
        self._rewind(e.to_epoch)
        self._event(e)

    def _epoch(self, e: ev.EpochCompleted) -> None:
        row = {"epoch": e.epoch, "phase": e.phase, "step": e.step, **e.metrics,
               "samples_per_second": e.samples_per_second, "duration_seconds": e.duration_seconds,
               "seeds": {s.seed_id: {"state": s.state, "alpha": s.alpha, "drift": s.drift} for s in e.seeds}}
        self._history.write(json.dumps(_clean(row)) + "\n")
        self._history.flush()
        if e.layers:
            signals = {f"{s.layer}/{s.signal}": [round(float(v), 6) for v in s.values] for s in e.layers}
            self._neurons.write(json.dumps({"epoch": e.epoch, **signals}) + "\n")
            self._neurons.flush()
        self.doc["metrics"] = _clean({**e.metrics, "epoch": e.epoch})
        self._write()

    def _measured(self, e: ev.MetricSamples) -> None:
        rows = [json.dumps(_clean({"epoch": e.epoch, "step": e.step, "metric": s.metric,
                                   "labels": list(s.labels), "value": s.value})) for s in e.samples]
        self._samples.write("".join(r + "\n" for r in rows))
        self._samples.flush()

    def _text(self, e: ev.TextSample) -> None:
        self._texts.write(json.dumps({"epoch": e.epoch, "step": e.step, "tag": e.tag, "text": e.text}) + "\n")
        self._texts.flush()

    def _decision(self, e: ev.Decision) -> None:
        # The payload is plain JSON (checked when the Decision was made): no cleaning needed.
        self._decisions.write(json.dumps(e.record()) + "\n")
        self._decisions.flush()

    def _event(self, e: Any) -> None:
        self._events.write(json.dumps(_clean({"event": type(e).__name__, **asdict(e)})) + "\n")
        self._events.flush()

    def _ended(self, e: ev.RunEnded) -> None:
        self._event(e)
        self.doc.update(status=e.status, error=e.error, metrics=_clean(dict(e.metrics)))
        self._write(final=True)

    def close(self) -> None:
        """Close the JSONL files."""
        for fh in (self._history, self._events, self._neurons, self._samples, self._texts, self._decisions):
            fh.close()

"""TensorBoard sink: scalars, per-neuron histograms and a text log of events.

Global step is the epoch everywhere, so every panel shares one x-axis. The
backend is imported in the constructor, keeping ``import engine`` light when
TensorBoard is disabled.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import SinkUnavailableError
from engine.telemetry import events as ev

log = logging.getLogger(__name__)


class TensorBoardSink:
    """Writes one run's telemetry as TensorBoard event files under ``log_dir``.

    Tags: ``metrics/<key>`` for every epoch metric, ``run/<field>`` for
    throughput, duration, plateau, progress and parameter count,
    ``seeds/<seed_id>/<field>``, histograms ``neurons/<layer>/<signal>``, text
    entries under ``config`` and ``events`` (milestones included), generated
    text under ``samples/<tag>`` and structural decisions with their scores
    (pretty JSON) under ``decisions/<kind>``.
    """

    name = "tensorboard"

    def __init__(self, log_dir: Path, histogram_every: int = 5) -> None:
        # Histograms are most of an epoch record's size (and of its pure-Python
        # CRC in TensorBoard's writer), so they are written every few epochs.
        self.histogram_every = max(1, histogram_every)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise SinkUnavailableError("tensorboard", "tensorboard") from exc
        self.log_dir = Path(log_dir)
        self._make_writer = SummaryWriter
        self._w: Any = None  # created on first use, see _writer
        # TensorBoard treats a step lower than one already seen as a restart and
        # discards newer data, so text events never go back in time.
        self._step = 0
        self._samples: dict[str, float] = {}
        self._closed = False

    @property
    def _writer(self) -> Any:
        """The event-file writer, created on first use: like MLflow's unreachable
        server, an unwritable ``log_dir`` then fails in a handler, which the bus
        isolates, instead of failing the whole run in the constructor."""
        if self._w is None:
            self._w = self._make_writer(log_dir=str(self.log_dir))
        return self._w

    def handlers(self) -> dict[type, Any]:
        """Event type -> handler."""
        return {
            ev.RunStarted: self._on_run_started,
            ev.EpochCompleted: self._on_epoch,
            ev.MetricSamples: self._on_samples,
            ev.SeedTransition: self._on_transition,
            ev.NonFiniteLoss: self._on_nonfinite,
            ev.Rollback: self._on_rollback,
            ev.LossExplosion: self._on_explosion,
            ev.StructuralImpact: self._on_impact,
            ev.TextSample: self._on_text_sample,
            ev.Decision: self._on_decision,
            ev.Milestone: self._on_milestone,
            ev.SinkFailed: self._on_sink_failed,
            ev.RunEnded: self._on_run_ended,
        }

    def _on_run_started(self, e: ev.RunStarted) -> None:
        self._step = e.start_epoch
        summary = (
            f"run `{e.run_id}` ({e.experiment}) on {e.device}, {e.parameters:,} parameters, "
            f"{e.total_epochs} epochs from epoch {e.start_epoch}, dir `{e.run_dir}`"
        )
        # Four-space indent renders as a code block in TensorBoard's markdown view.
        cfg = json.dumps(e.config, indent=2, sort_keys=True, default=str)
        self._writer.add_text("run", summary, e.start_epoch)
        self._writer.add_text("config", "    " + cfg.replace("\n", "\n    "), e.start_epoch)

    def _on_epoch(self, e: ev.EpochCompleted) -> None:
        # One Summary (one event record) per epoch holding every scalar and
        # histogram: ~30x cheaper than one add_scalar call per value, which is
        # what keeps telemetry overhead within budget on small, fast models.
        from tensorboard.compat.proto.summary_pb2 import Summary

        step = e.epoch
        self._step = max(self._step, step)
        scalars = [(f"metrics/{k}", v) for k, v in e.metrics.items()]
        scalars += [("run/samples_per_second", e.samples_per_second), ("run/duration_seconds", e.duration_seconds),
                    ("run/plateau", e.plateau), ("run/progress", e.progress), ("run/parameters", e.parameters)]
        scalars += [(f"seeds/{s.seed_id}/{key}", getattr(s, key))
                    for s in e.seeds for key in ("alpha", "drift", "health", "train_loss")]
        scalars += list(self._samples.items())  # the epoch's latest family measurements
        self._samples = {}
        values = [Summary.Value(tag=tag, simple_value=float(v)) for tag, v in scalars]
        layers = e.layers if step % self.histogram_every == 0 else ()
        for sig in layers:
            hist = _histogram(sig.values)
            if hist is not None:
                values.append(Summary.Value(tag=f"neurons/{sig.layer}/{sig.signal}", histo=hist))
        self._writer.file_writer.add_summary(Summary(value=values), step)

    def _on_samples(self, e: ev.MetricSamples) -> None:
        # Buffered into the epoch's single Summary; every value of every
        # measurement, with its step, is in samples.jsonl.
        for s in e.samples:
            self._samples["/".join(("family", s.metric, *s.labels))] = s.value

    def _text(self, text: str) -> None:
        self._writer.add_text("events", text, self._step)

    def _code_block(self, tag: str, name: str, description: str, step: int, text: str) -> None:
        """``text`` as a code block under ``tag`` at the epoch axis' current step.

        Written in the text plugin's own format (a scalar string tensor with
        the plugin's metadata, as tf.summary.text writes it) rather than with
        add_text, which would name the tag <tag>/text_summary and store a
        1-element array (shown as a table). The four-space indent makes it a
        code block: generated characters and JSON are shown as they are, not
        as markdown.
        """
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        from tensorboard.compat.proto.types_pb2 import DT_STRING
        from tensorboard.plugins.text.metadata import create_summary_metadata

        body = f"step {step}:\n\n    " + text.replace("\n", "\n    ")
        tensor = TensorProto(dtype=DT_STRING, string_val=[body.encode("utf-8")], tensor_shape=TensorShapeProto())
        meta = create_summary_metadata(display_name=name, description=description)
        value = Summary.Value(tag=tag, metadata=meta, tensor=tensor)
        self._writer.file_writer.add_summary(Summary(value=[value]), self._step)

    def _on_text_sample(self, e: ev.TextSample) -> None:
        self._step = max(self._step, e.epoch)
        self._code_block(f"samples/{e.tag}", e.tag, "Text generated by the model.", e.step, e.text)

    def _on_decision(self, e: ev.Decision) -> None:
        # One tag per kind: the Text tab then steps through a kind's rounds on the epoch axis.
        self._step = max(self._step, e.epoch)
        self._code_block(f"decisions/{e.kind}", e.kind, "A structural decision and the scores that drove it.",
                         e.step, json.dumps(e.payload, indent=2, sort_keys=True))

    def _on_milestone(self, e: ev.Milestone) -> None:
        self._step = max(self._step, e.epoch)
        detail = f": {e.detail}" if e.detail else ""
        self._text(f"epoch {e.epoch}, step {e.step}: milestone `{e.name}`{detail}")

    def _on_transition(self, e: ev.SeedTransition) -> None:
        self._step = max(self._step, e.epoch)
        why = f" ({e.reason})" if e.reason else ""
        self._text(f"epoch {e.epoch}: seed `{e.seed_id}` on `{e.layer}` "
                   f"{e.from_state} -> {e.to_state}{why}")

    def _on_impact(self, e: ev.StructuralImpact) -> None:
        self._text(e.describe())

    def _on_explosion(self, e: ev.LossExplosion) -> None:
        self._text(f"epoch {e.epoch}: loss exploding ({e.loss:.4g}, {e.ratio:.1f}x its baseline)")

    def _on_rollback(self, e: ev.Rollback) -> None:
        self._text(f"epoch {e.epoch}, step {e.step}: non-finite loss {e.value}; rollback {e.attempt}/"
                   f"{e.max_rollbacks} to epoch {e.to_epoch} (step {e.to_step}), learning rate x{e.lr_scale:g}")

    def _on_nonfinite(self, e: ev.NonFiniteLoss) -> None:
        self._step = max(self._step, e.epoch)
        self._text(f"epoch {e.epoch}, step {e.step}: non-finite loss {e.value}")

    def _on_sink_failed(self, e: ev.SinkFailed) -> None:
        self._text(f"sink `{e.sink}` failed and was disabled: {e.error}")

    def _on_run_ended(self, e: ev.RunEnded) -> None:
        finals = ", ".join(f"{k}={v:.4g}" for k, v in e.metrics.items() if math.isfinite(v))
        err = f"; error: {e.error}" if e.error else ""
        self._text(f"run `{e.run_id}` ended: {e.status}" + (f"; {finals}" if finals else "") + err)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (idempotent)."""
        if not self._closed:
            self._closed = True
            if self._w is not None:
                self._w.close()


def _histogram(raw: Any, bins: int = 30) -> Any:
    """A HistogramProto of the finite values of ``raw`` (shape ``[units]``), or None."""
    from tensorboard.compat.proto.summary_pb2 import HistogramProto

    values = np.asarray(raw, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]  # numpy cannot bin NaN/Inf
    if not values.size:
        return None
    counts, edges = np.histogram(values, bins=min(bins, max(values.size, 1)))
    return HistogramProto(min=float(values.min()), max=float(values.max()), num=float(values.size),
                          sum=float(values.sum()), sum_squares=float(values @ values),
                          bucket_limit=edges[1:].tolist(), bucket=counts.astype(float).tolist())

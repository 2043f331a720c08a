"""Prometheus export of structural changes and their measured impact.

Kept apart from :mod:`engine.sinks.prometheus` (which owns the registry and
the HTTP server); it only turns :class:`StructuralChange` and
:class:`StructuralImpact` events into catalog metric updates.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from engine.sinks.counters import CounterLedger
from engine.telemetry import events as ev


def _label(value: float) -> str:
    """A quality figure as a label value: 4 significant digits (bounded text, stable)."""
    return f"{value:.4g}" if math.isfinite(value) else str(value)


class StructuralExport:
    """Updates the ``structural_*`` metrics of one run."""

    def __init__(self, child: Callable[..., Any], counters: CounterLedger, info_metric: Any) -> None:
        self._c, self._counters, self._info = child, counters, info_metric
        self._info_labels: dict[tuple[str, str], tuple[str, ...]] = {}

    def started(self, run_id: str, streak_limit: int, net_limit: float, kinds: tuple[str, ...]) -> None:
        """Expose the gauges and the family's harm counters (``kinds``) from the start, at 0."""
        self._run_id = run_id
        self._info_labels.clear()
        for kind in kinds:
            self._counters.advance(("structural_harmful_total", kind), 0)
        self._c("structural_harmful_streak").set(0.0)
        self._c("structural_harmful_streak_limit").set(float(streak_limit))
        self._c("structural_net_change_ratio").set(0.0)
        self._c("structural_net_change_limit_ratio").set(float(net_limit))

    def change(self, e: ev.StructuralChange) -> None:
        """Count one structural change."""
        self._counters.bump(("structural_changes_total", e.kind, e.layer))

    def impact(self, e: ev.StructuralImpact) -> None:
        """Record a settled change: histogram, last relative change, info series, harm counters."""
        # Clamp so a non-finite after (e.g. a NaN val loss) lands in the top bucket, not nowhere.
        rel = e.relative if math.isfinite(e.relative) else (1e9 if e.relative > 0 or math.isnan(e.relative) else -1e9)
        self._c("structural_impact_change_ratio", e.kind).observe(rel)
        self._c("structural_impact_last_change_ratio", e.kind, e.layer).set(rel)
        if e.harmful:
            self._counters.bump(("structural_harmful_total", e.kind))
        else:
            self._counters.advance(("structural_harmful_total", e.kind), 0)  # exposed at 0
        self._c("structural_harmful_streak").set(float(e.streak))
        self._c("structural_net_change_ratio").set(e.net)
        labels = (self._run_id, e.kind, e.layer, _label(e.before), _label(e.after))
        old = self._info_labels.get((e.kind, e.layer))
        if old is not None and old != labels:  # one series per kind and layer at a time
            self._info.remove(*old)
        self._info.labels(*labels).set(1.0)
        self._info_labels[(e.kind, e.layer)] = labels

"""Structural-change accounting: what each structural change did to the model.

Every :class:`~engine.telemetry.events.StructuralChange` an experiment returns
is recorded with the family's quality figure (lower is better, e.g.
validation loss) just before it: the figure the family measured itself when it
gives one, else the latest evaluation. ``settle`` evaluations later the change
is resolved into a :class:`~engine.telemetry.events.StructuralImpact` with the
figure after, the change and whether it was harmful (relatively worse by more
than ``tolerance``). Changes of the same kind and layer recorded against the
same evaluation are merged (their units add up), so a mechanism that acts
every few steps yields one impact per layer and window.

Windows do not overlap, so no change answers for another's effect: a new
change closes every pending window that has seen at least one evaluation
(its effect is measured up to the last evaluation before the new change), and
the pending window of the same ``subject`` (e.g. a seed id) even with none: a
seed's germination is judged up to its blend start, its blend start up to
its blend end, and so on. A change with no evaluation in its window has
``settled == 0`` and no effect. Changes recorded in the same interval between
two evaluations share their window.
A change that brings its own ``quality_before`` (the family evaluated just
before making it) closes those windows at that figure.

``net`` adds up the net effects of structural changes, relative to the
figure before the first change: it shows harm that comes in steps each under
the tolerance. A change without a subject counts its own window's change. A
subject's changes (a seed's germination, blend, probation) count together
when a terminal change of it settles (fossilize, cull, seed rollback): the
figure after it minus the figure before the subject's first change. A seed
the guard rolled back therefore adds nothing, however much it hurt while it
was on probation, and a kept one adds what it really did.

``streak`` counts harmful windows in a row: a measured window within the
tolerance (or better) resets it; a change with no evaluation in its window
(``settled == 0``: a germinated seed closed by its blend start) says nothing
and leaves it. Changes sharing one window (several layers replaced in one
task) are one measurement: they count once towards ``streak`` and ``net``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from engine.telemetry.events import TERMINAL_KINDS, StructuralChange, StructuralImpact

_NAN = math.nan


@dataclass
class _Pending:
    change: StructuralChange
    before: float
    accuracy_before: float
    evaluation: int  # evaluations done when "before" was measured
    due: int  # evaluation count at which it resolves


@dataclass
class ImpactLedger:
    """Pending structural changes and the run's harmful streak."""

    settle: int = 2
    tolerance: float = 0.02
    evaluations: int = 0
    quality: float = _NAN  # the latest evaluation's figure
    metric: str = ""  # its name
    accuracy: float = _NAN
    streak: int = 0
    net: float = 0.0  # sum of settled deltas over |first before|
    origin: float = _NAN  # the figure before the first settled change
    window: tuple[int, int, float, float] | None = None  # the last window counted (evaluation, settled, before, after)
    opened: dict[str, float] = field(default_factory=dict)  # subject -> figure before its first change
    pending: list[_Pending] = field(default_factory=list)

    def record(self, change: StructuralChange) -> list[StructuralImpact]:
        """Record ``change`` against the latest evaluation (or its own ``quality_before`` when finite).

        Returns the impacts of pending changes of the same subject, whose window it closes.
        """
        own = math.isfinite(change.quality_before)
        before = change.quality_before if own else self.quality
        if change.subject and change.subject not in self.opened:
            self.opened[change.subject] = before
        closed: list[StructuralImpact] = []
        ends = [p for p in self.pending
                if p.evaluation < self.evaluations or (change.subject and p.change.subject == change.subject)]
        if ends:
            self.pending = [p for p in self.pending if not any(p is q for q in ends)]
            closed = [self._resolve(p, self.metric, self.evaluations - p.evaluation + own,
                                    before if own else None) for p in ends]
        for p in self.pending:
            if (p.change.kind, p.change.layer, p.evaluation) == (change.kind, change.layer, self.evaluations) \
                    and p.before == before:
                p.change = replace(p.change, units=p.change.units + change.units)
                return closed
        self.pending.append(_Pending(change, before, self.accuracy, self.evaluations,
                                     self.evaluations + self.settle))
        return closed

    def evaluate(self, metric: str, quality: float, accuracy: float = _NAN) -> list[StructuralImpact]:
        """One evaluation happened: resolve the changes whose settle window it closes."""
        self.evaluations += 1
        self.quality, self.accuracy, self.metric = quality, accuracy, metric
        due = [p for p in self.pending if p.due <= self.evaluations]
        self.pending = [p for p in self.pending if p.due > self.evaluations]
        return [self._resolve(p, metric, self.evaluations - p.evaluation) for p in due]

    def flush(self, metric: str) -> list[StructuralImpact]:
        """The run ends: resolve what is pending against the latest evaluation (a shorter window;
        a change made after the last evaluation settles with ``settled == 0``: no measured effect)."""
        out = [self._resolve(p, metric, self.evaluations - p.evaluation) for p in self.pending]
        self.pending = []
        return out

    def _resolve(self, p: _Pending, metric: str, settled: int, measured: float | None = None) -> StructuralImpact:
        after = self.quality if measured is None else measured
        after = after if settled > 0 else p.before  # no evaluation since: no measured effect
        after_acc = self.accuracy if settled > 0 and measured is None else p.accuracy_before
        delta = after - p.before
        relative = delta / abs(p.before) if p.before else (0.0 if delta == 0 else math.copysign(math.inf, delta))
        if not math.isfinite(after) and math.isfinite(p.before):
            relative = math.inf  # a non-finite figure after the change is the worst outcome
        harmful = bool(relative > self.tolerance)
        if not math.isfinite(self.origin) and math.isfinite(p.before):
            self.origin = p.before
        window = (p.evaluation, settled, p.before, after)
        c = p.change
        first = self.opened.pop(c.subject, p.before) if c.kind in TERMINAL_KINDS else p.before
        counted = c.kind in TERMINAL_KINDS or not c.subject
        if counted and math.isfinite(after - first) and math.isfinite(self.origin) and self.origin \
                and (c.subject or window != self.window):
            self.net += (after - first) / abs(self.origin)
        if settled > 0 and window != self.window:  # a new measurement
            self.window = window
            self.streak = self.streak + 1 if harmful else 0
        return StructuralImpact(c.kind, c.layer, c.epoch, c.step, c.units, c.subject, metric, p.before,
                                after, delta, relative, harmful, settled, p.accuracy_before,
                                after_acc, self.streak, self.net)

    def state_dict(self) -> dict[str, Any]:
        """Ledger state for checkpoints (plain values only)."""
        return {"evaluations": self.evaluations, "quality": self.quality, "accuracy": self.accuracy,
                "metric": self.metric,
                "streak": self.streak, "net": self.net, "origin": self.origin,
                "window": list(self.window) if self.window else None, "opened": dict(self.opened),
                "pending": [{"change": {k: getattr(p.change, k) for k in StructuralChange.__dataclass_fields__},
                             "before": p.before, "accuracy_before": p.accuracy_before,
                             "evaluation": p.evaluation, "due": p.due} for p in self.pending]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.evaluations, self.streak = int(state["evaluations"]), int(state["streak"])
        self.quality, self.accuracy = float(state["quality"]), float(state["accuracy"])
        self.metric = str(state.get("metric", ""))
        self.net, self.origin = float(state.get("net", 0.0)), float(state.get("origin", _NAN))
        w = state.get("window")
        self.window = (int(w[0]), int(w[1]), float(w[2]), float(w[3])) if w else None
        self.opened = {str(k): float(v) for k, v in (state.get("opened") or {}).items()}
        self.pending = [_Pending(StructuralChange(**p["change"]), float(p["before"]), float(p["accuracy_before"]),
                                 int(p["evaluation"]), int(p["due"])) for p in state["pending"]]

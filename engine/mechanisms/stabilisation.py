"""Warm-up stabilisation: when has the evaluation loss stopped falling fast?

Structural decisions taken while the loss still falls steeply judge heads (or
units) by scores of a network that is still changing fast, and their effect
on the loss is confounded with the ongoing descent. :class:`WarmupDetector`
states the rule that gates them.

**The rule.** Each evaluation loss ``y_t`` is (optionally) smoothed by an
exponential moving average ``s_t = ema * s_{t-1} + (1 - ema) * y_t`` (``ema``
0 keeps the raw losses). Over the last ``window`` values a least-squares line
``s ~ a + b * i`` is fitted against the evaluation index ``i``, and

    relative slope  r = |b| * window / mean(s over the window)

is the fraction by which the loss would still change over one more window at
the current rate. An evaluation is *stable* when ``r < threshold``; warm-up is
over at the ``patience``-th stable evaluation in a row, and never before
``min_evaluations`` evaluations (nor before the first full window). The
detection latches: it happens once per run.

**Why this rule.**

* A least-squares slope over a window, rather than the difference of two
  evaluations, averages the evaluation noise out: with noise of standard
  deviation ``sigma`` around a level ``m``, the standard deviation of ``r`` is
  about ``(sigma / m) * sqrt(12 / window)``. A threshold at least three times
  that keeps noise from hiding a fall (or faking a flat window).
* Relative to the level, so one threshold means the same on any corpus,
  vocabulary or model size (a loss of 4 nats falling by 0.2 per window is as
  far from stable as one of 1 nat falling by 0.05).
* Per evaluation, not per step: the evaluation interval is the family's unit
  of time, so the rule does not change with ``eval_every``; evaluations are
  assumed evenly spaced.
* The absolute slope: a rising loss is not "stable" either.
* ``patience`` rejects a single flat window, e.g. a short plateau before a
  further drop (a char-level transformer's early unigram plateau). A plateau
  longer than ``window + patience - 1`` evaluations is indistinguishable
  from convergence to this rule: make the window longer than such plateaus.

A non-finite loss starts the window over (it would poison every fit it is in)
and resets the streak. Plain Python, no torch: the state is plain values, so
it checkpoints with ``weights_only=True``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def relative_slope(values: Sequence[float]) -> float:
    """``|b| * n / |mean|`` of the least-squares line through ``values`` against 0..n-1 (inf at mean 0).

    The fraction by which the series would change over ``n`` more points at
    its fitted rate.
    """
    n = len(values)
    if n < 2:
        raise ValueError(f"a slope needs at least 2 values, got {n}")
    x_mean = (n - 1) / 2
    y_mean = sum(values) / n
    sxx = sum((i - x_mean) ** 2 for i in range(n))
    sxy = sum((i - x_mean) * (y - y_mean) for i, y in enumerate(values))
    slope = sxy / sxx
    return abs(slope) * n / abs(y_mean) if y_mean != 0 else math.inf


class WarmupDetector:
    """Detects, once, that the evaluation loss has stabilised (rule in the module docstring).

    ``observe(step, loss)`` after every evaluation returns True exactly once:
    at the evaluation that completes the rule; ``stable`` and ``stable_step``
    (the ``step`` passed then, -1 before) stay set from then on, and later
    observations are ignored. ``relative_slope`` is the latest fitted value
    (NaN before the first full window), ``streak`` the stable evaluations in
    a row.
    """

    def __init__(self, window: int = 5, threshold: float = 0.05, patience: int = 2, *,
                 min_evaluations: int = 0, ema: float = 0.0) -> None:
        if window < 2:
            raise ValueError(f"window must be at least 2 evaluations, got {window}")
        if not threshold > 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        if patience < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        if min_evaluations < 0:
            raise ValueError(f"min_evaluations must be >= 0, got {min_evaluations}")
        if not 0 <= ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        self.window, self.threshold, self.patience = window, threshold, patience
        self.min_evaluations, self.ema = min_evaluations, ema
        self.evaluations = 0  # finite losses observed before detection
        self.streak = 0
        self.relative_slope = math.nan
        self.stable_step = -1
        self._values: list[float] = []  # the last `window` (smoothed) losses
        self._smoothed: float | None = None

    @property
    def stable(self) -> bool:
        """Whether warm-up stabilisation has been detected."""
        return self.stable_step >= 0

    def observe(self, step: int, loss: float) -> bool:
        """Record one evaluation loss taken at ``step``; True only at the evaluation that detects stability."""
        if self.stable:
            return False
        loss = float(loss)
        if not math.isfinite(loss):  # start over: a NaN/Inf would poison every fit it is part of
            self._values, self._smoothed, self.streak, self.relative_slope = [], None, 0, math.nan
            return False
        self.evaluations += 1
        prev = self._smoothed
        self._smoothed = loss if prev is None else self.ema * prev + (1 - self.ema) * loss
        self._values = (self._values + [self._smoothed])[-self.window:]
        if len(self._values) < self.window:
            return False
        self.relative_slope = relative_slope(self._values)
        self.streak = self.streak + 1 if self.relative_slope < self.threshold else 0
        if self.streak >= self.patience and self.evaluations >= self.min_evaluations:
            self.stable_step = int(step)
            return True
        return False

    def describe(self) -> str:
        """One line for logs and milestones: the rule's figures now."""
        state = f"stable since step {self.stable_step}" if self.stable else "not stable yet"
        return (f"{state}: relative slope {self.relative_slope:.3g} (threshold {self.threshold:g}) over the last "
                f"{self.window} evaluations, {self.streak} stable in a row (patience {self.patience}), "
                f"{self.evaluations} evaluations")

    def state_dict(self) -> dict[str, Any]:
        """Plain values (checkpoints load them with ``weights_only=True``)."""
        return {"values": list(self._values), "smoothed": self._smoothed, "evaluations": self.evaluations,
                "streak": self.streak, "relative_slope": self.relative_slope, "stable_step": self.stable_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the rule's settings come from the constructor, i.e. the run's config)."""
        values = [float(v) for v in state["values"]]
        if len(values) > self.window:
            raise ValueError(f"state holds {len(values)} losses, more than the window of {self.window}")
        self._values = values
        self._smoothed = None if state["smoothed"] is None else float(state["smoothed"])
        self.evaluations, self.streak = int(state["evaluations"]), int(state["streak"])
        self.relative_slope, self.stable_step = float(state["relative_slope"]), int(state["stable_step"])

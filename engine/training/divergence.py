"""Short-horizon divergence signal computed by the trainer for every family.

A loss that blows up without becoming NaN (e.g. a learning rate far too
high) can leave a run "finished" at chance level, and a baseline-window
alert needs half an hour of history to see it. The trainer therefore
compares each epoch's mean training loss with a baseline known from the
run's first steps: the lower of the loss at initialisation (the run's first
step, before any update) and the best epoch mean of the current phase so far
(phases of one family are not comparable with each other: a new class stage
or a frozen trunk changes the loss's scale). An epoch above ``factor`` times
that baseline is an exploding evaluation; ``patience`` consecutive ones mark
the loss as exploding. Both numbers are exported, so the alert works from
the first epochs. Measured with every family's defaults, healthy runs stay
under 1.6x; a learning rate 10-1000x too high gives 100x to 1e13x in the
epoch it hits (then, in the plasticity family, a dead network at chance
loss, ~3x), hence the defaults: 5x, one evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class ExplosionWatch:
    """Counts consecutive evaluations whose train loss is far above the run's baseline."""

    factor: float = 5.0
    patience: int = 1
    initial: float = math.nan  # loss of the first finite step; NaN until seen
    phase: str = ""
    phase_best: float = math.inf  # best epoch mean of the current phase
    count: int = 0  # consecutive exploding evaluations

    def first_loss(self, loss: float) -> None:
        """Record the loss at initialisation (the first call with a finite loss wins)."""
        if math.isnan(self.initial) and math.isfinite(loss):
            self.initial = loss

    def observe(self, phase: str, train_loss: float) -> dict[str, float]:
        """Update with an epoch's mean train loss; returns the exported values."""
        if phase != self.phase:
            self.phase, self.phase_best = phase, math.inf
        baseline = min(self.initial, self.phase_best) if not math.isnan(self.initial) else math.nan
        ratio = train_loss / baseline if baseline > 0 and math.isfinite(train_loss) else 0.0
        self.count = self.count + 1 if ratio > self.factor else 0
        if math.isfinite(train_loss):
            self.phase_best = min(self.phase_best, train_loss)
        return {"train_loss_baseline_ratio": ratio, "loss_exploding_evaluations": float(self.count)}

    @property
    def exploding(self) -> bool:
        """Whether the last ``patience`` evaluations all exploded."""
        return self.patience > 0 and self.count >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """Reference losses and the current streak."""
        return {"initial": self.initial, "phase": self.phase, "phase_best": self.phase_best, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.initial, self.phase = float(state["initial"]), str(state["phase"])
        self.phase_best, self.count = float(state["phase_best"]), int(state["count"])

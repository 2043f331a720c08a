"""Short-horizon divergence signal computed by the trainer for every family.

A loss that blows up without becoming NaN (e.g. a learning rate far too
high) can leave a run "finished" at chance level, and a baseline-window
alert needs half an hour of history to see it. The trainer therefore
compares each epoch's watched loss (the mean train loss; a family whose
train loss changes scale in a phase names another metric for it, e.g. the
neurogenesis family's validation loss in its class stages) with a baseline
known from the run's first steps: the lower of the loss at initialisation
(the run's first step, before any update) and the best epoch of that metric
so far. An epoch above ``factor``
times that baseline is an exploding evaluation; ``patience`` consecutive ones
make an explosion, which the trainer publishes as an event (counted, so a
short episode between two scrapes is not missed). Measured with every
family's defaults, healthy runs stay under 2.4x (neurogenesis: the first
class stages); a learning rate 10-1000x too high gives 100x to 1e13x in the
epoch it hits, hence the defaults: 5x, one evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ExplosionWatch:
    """Counts consecutive evaluations whose watched loss is far above the run's baseline."""

    factor: float = 5.0
    patience: int = 1
    initial: float = math.nan  # loss of the first finite step; NaN until seen
    best: dict[str, float] = field(default_factory=dict)  # watched metric -> its best epoch so far
    count: int = 0  # consecutive exploding evaluations

    def first_loss(self, loss: float) -> None:
        """Record the loss at initialisation (the first call with a finite loss wins)."""
        if math.isnan(self.initial) and math.isfinite(loss):
            self.initial = loss

    def observe(self, metric: str, loss: float) -> dict[str, float]:
        """Update with an epoch's watched loss (named ``metric``); returns the exported values."""
        best = self.best.get(metric, math.inf)
        baseline = min(self.initial, best) if not math.isnan(self.initial) else math.nan
        ratio = loss / baseline if baseline > 0 and math.isfinite(loss) else 0.0
        self.count = self.count + 1 if ratio > self.factor else 0
        if math.isfinite(loss):
            self.best[metric] = min(best, loss)
        return {"loss_baseline_ratio": ratio, "loss_exploding_evaluations": float(self.count)}

    @property
    def erupted(self) -> bool:
        """True at the evaluation whose streak just reached ``patience`` (once per episode)."""
        return self.patience > 0 and self.count == self.patience

    def state_dict(self) -> dict[str, Any]:
        """Reference losses and the current streak."""
        return {"initial": self.initial, "best": dict(self.best), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.initial, self.count = float(state["initial"]), int(state["count"])
        self.best = {str(k): float(v) for k, v in state["best"].items()}

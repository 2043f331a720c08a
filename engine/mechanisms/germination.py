"""Germination controller: decides *when* and *which* seed germinates.

It watches validation loss during the adaptation phase. An epoch whose loss
improves on the best by less than ``delta`` extends the plateau; when the
plateau reaches ``patience`` while accuracy is below ``acc_threshold``, the
dormant seed with the worst health (lowest interface activation variance) is
chosen. It returns a plan and never touches the model itself; at most one
germination per epoch follows from returning at most one plan per call.

While a seed is busy (training, blending or on probation) the controller
does not count plateaus, and it takes the loss of the model as that seed left
it as its new best: a plateau or a worsening *caused by a seed* therefore never
germinates another one. Only a plateau of the model as it stands, ``patience``
epochs long after the last seed was settled, does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from engine.mechanisms.seed_plans import GerminateSeed


@dataclass
class GerminationController:
    """Plateau detector with the germination policy."""

    patience: int
    delta: float
    acc_threshold: float
    best_loss: float = math.inf
    plateau: int = 0

    def observe(self, val_loss: float, val_acc: float, dormant_health: dict[str, float],
                busy: bool = False) -> GerminateSeed | None:
        """Record one adaptation epoch; return a plan when a seed should germinate.

        ``dormant_health`` maps each dormant seed id to its health signal;
        ``busy`` is true while a seed is training, blending or on probation.
        """
        if busy:
            self.best_loss, self.plateau = val_loss, 0
            return None
        if val_loss < self.best_loss - self.delta:
            self.best_loss, self.plateau = val_loss, 0
            return None
        self.best_loss = min(self.best_loss, val_loss)
        self.plateau += 1
        if self.plateau < self.patience or val_acc >= self.acc_threshold or not dormant_health:
            return None
        self.plateau = 0  # a new seed gets a fresh patience window
        worst = min(sorted(dormant_health), key=lambda k: dormant_health[k])
        return GerminateSeed(worst, reason=f"plateau {self.patience} epochs, acc {val_acc:.3f} < {self.acc_threshold}")

    def state_dict(self) -> dict[str, Any]:
        """Plateau state for checkpoints."""
        return {"best_loss": self.best_loss, "plateau": self.plateau}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.best_loss, self.plateau = float(state["best_loss"]), int(state["plateau"])

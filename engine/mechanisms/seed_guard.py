"""Seed guard: a seed whose blending makes the model worse is rolled back.

One seed is *in flight* at a time: from the moment its child starts blending
until, after alpha reached 1, ``probation_epochs`` evaluations in a row have
not improved on its best validation loss (a seed that keeps improving the
model keeps learning; one that stopped is judged). The quality
figure (validation loss, lower is better) of the last evaluation before
blending began is the reference. The seed is judged on it:

* at any evaluation in flight, a loss above ``reference * (1 + abort_tolerance)``
  (or a non-finite one) rolls it back at once: the damage is too large to wait;
* at the end of its probation, a loss above ``reference * (1 + tolerance)``
  rolls it back; otherwise it is accepted and fossilized (frozen), so the
  model the next seed is judged against stays fixed.

Rolling back is a :class:`CullSeed` plan: the surgery module sets alpha back
to 0 (with the trunk frozen, the model's function is then exactly what it was
before the seed) and removes the child from the optimizer. The guard returns
plans and never touches the model itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from engine.mechanisms.seed_plans import CullSeed, FossilizeSeed


@dataclass
class SeedGuard:
    """Probation of the seed in flight (at most one)."""

    tolerance: float
    probation_epochs: int
    abort_tolerance: float = math.inf
    seed: str = ""  # the seed in flight ("" when none)
    reference: float = math.nan  # val loss of the last evaluation before it blended
    left: int = -1  # evaluations without improvement left after alpha reached 1 (-1: still blending)
    last_loss: float = math.nan  # val loss of the latest evaluation
    best: float = math.nan  # the seed's best val loss since it started blending

    @property
    def busy(self) -> bool:
        """Whether a seed is blending or on probation."""
        return bool(self.seed)

    def start(self, seed: str) -> None:
        """``seed`` starts blending now; its reference is the latest evaluation."""
        self.seed, self.reference, self.left, self.best = seed, self.last_loss, -1, self.last_loss

    def blended(self, seed: str) -> None:
        """``seed``'s alpha reached 1: its probation starts."""
        if seed == self.seed:
            self.left = self.probation_epochs

    def observe(self, val_loss: float, final: bool = False) -> CullSeed | FossilizeSeed | None:
        """Judge the seed in flight on this evaluation's ``val_loss``.

        Returns a cull plan when it hurt, a fossilize plan when its probation
        ended within the tolerance, else None (nothing in flight, or pending).
        ``final`` (the run's last evaluation) ends the probation now: a seed
        still in flight may not leave the model worse than it found it.
        """
        self.last_loss = val_loss
        if not self.seed or not math.isfinite(self.reference):
            return None
        if final:
            self.left = 1
        seed, ref = self.seed, self.reference
        change = (val_loss - ref) / abs(ref) if ref else (math.inf if val_loss > 0 else 0.0)
        change = change if math.isfinite(val_loss) else math.inf
        if change > self.abort_tolerance:
            self._clear()
            return CullSeed(seed, f"rolled back while blending: val loss {ref:.4g} -> {val_loss:.4g} "
                                  f"(+{change:.0%} > {self.abort_tolerance:.0%})")
        improved = val_loss < self.best * (1.0 - 1e-2)  # 1%: a real improvement, not a wiggle
        self.best = min(self.best, val_loss)
        if self.left > 0:
            self.left = self.probation_epochs if improved and not final else self.left - 1
        if self.left != 0:
            return None
        self._clear()
        if change > self.tolerance:
            return CullSeed(seed, f"rolled back after probation: val loss {ref:.4g} -> {val_loss:.4g} "
                                  f"(+{change:.0%} > {self.tolerance:.0%})")
        return FossilizeSeed(seed, f"accepted after probation: val loss {ref:.4g} -> {val_loss:.4g}")

    def _clear(self) -> None:
        self.seed, self.reference, self.left = "", math.nan, -1

    def state_dict(self) -> dict[str, Any]:
        """Guard state for checkpoints."""
        return {"seed": self.seed, "reference": self.reference, "left": self.left, "last_loss": self.last_loss,
                "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.seed, self.left = str(state["seed"]), int(state["left"])
        self.reference, self.last_loss = float(state["reference"]), float(state["last_loss"])
        self.best = float(state.get("best", self.reference))

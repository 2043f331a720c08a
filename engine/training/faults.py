"""Fault drills: deliberate failures injected by the trainer, the same for every family.

Drills let users (and the test suite) check that each failure mode is visible
and pages: a NaN loss (``fault_nan_step``), an exception inside the training
loop (``fault_exception_step``) and a loss blow-up from a learning rate
scaled far too high (``fault_lr_scale_step``). Each drill fires at most once
per process, so a rollback that replays the step does not meet it again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """The exception raised by the ``fault_exception_step`` drill."""


@dataclass
class FaultDrills:
    """Step indices (0-based, -1 off) of the drills of one run."""

    nan_step: int = -1
    exception_step: int = -1
    lr_scale_step: int = -1
    lr_scale: float = 1000.0
    fired: set[str] = field(default_factory=set)

    @classmethod
    def from_config(cls, train: dict[str, Any]) -> "FaultDrills":
        """Drills from the resolved ``train`` config section (a plain dict)."""
        return cls(int(train.get("fault_nan_step", -1)), int(train.get("fault_exception_step", -1)),
                   int(train.get("fault_lr_scale_step", -1)), float(train.get("fault_lr_scale", 1000.0)))

    def _due(self, name: str, at: int, step: int) -> bool:
        if at < 0 or step != at or name in self.fired:
            return False
        self.fired.add(name)
        return True

    def before_step(self, step: int, scale_lr: Callable[[float], None]) -> None:
        """Drills that act before the forward pass of ``step``."""
        if self._due("exception", self.exception_step, step):
            raise InjectedFault(f"fault drill: exception injected at step {step} (--fault_exception_step)")
        if self._due("lr_scale", self.lr_scale_step, step):
            log.warning("fault drill: learning rate x%g at step %d (--fault_lr_scale_step)", self.lr_scale, step)
            scale_lr(self.lr_scale)

    def corrupt(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        """The loss of ``step``, made NaN when the NaN drill is due (a real NaN tensor,
        so it flows exactly as a numerical NaN would)."""
        if self._due("nan", self.nan_step, step):
            return loss * float("nan")
        return loss

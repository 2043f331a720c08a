"""How the trainer runs a step's forward pass: in one process, or as one rank of many.

:class:`SingleProcess` is the default: the whole batch, the family's own
``compute_loss``, the loss read once from the device. A data-parallel run
gives the trainer :class:`engine.distributed.context.DataParallel` instead,
with the same three calls (shard, loss, agreed value and stop), so the loop
itself has no distributed code.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class StepPolicy(Protocol):
    """The trainer's per-step hooks (see :class:`SingleProcess` for their single-process meaning)."""

    def shard(self, batch: Any) -> Any:
        """The part of ``batch`` this process trains on."""
        ...

    def compute_loss(self, exp: Any, batch: Any, step: int) -> torch.Tensor:
        """``exp.compute_loss(batch, step)``, wrapped as the run needs."""
        ...

    def loss_value(self, loss: torch.Tensor, stop: bool) -> tuple[float, bool]:
        """The step's loss as a float (the whole batch's) and whether every process stops after it."""
        ...

    def agree_stop(self, stop: bool) -> bool:
        """Whether to stop at this epoch end (the same answer in every process)."""
        ...


class SingleProcess:
    """One process trains on every batch whole."""

    def shard(self, batch: Any) -> Any:
        """The whole batch."""
        return batch

    def compute_loss(self, exp: Any, batch: Any, step: int) -> torch.Tensor:
        """The family's forward pass as is."""
        return exp.compute_loss(batch, step)

    def loss_value(self, loss: torch.Tensor, stop: bool) -> tuple[float, bool]:
        """``float(loss)``: the one host sync of the step's loss."""
        return float(loss.detach()), stop

    def agree_stop(self, stop: bool) -> bool:
        """``stop`` as is."""
        return stop

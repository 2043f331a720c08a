"""The contract between the generic trainer and an experiment family.

Family-specific metrics travel as :class:`~engine.telemetry.events.MetricSamples`
events (catalog short names plus label values) in ``StepResult.events`` or
``EpochReport.events``; sinks export them without knowing the family.

The trainer owns the loop, timing, non-finite detection, fault drills,
rollbacks, signals, checkpoints and event publishing; an experiment owns its
model, optimizer, data and mechanisms. A step is two calls, so the trainer
checks the loss between the forward pass and the update: ``compute_loss``
must not change any state a skipped update would leave inconsistent. Experiments return plain event objects for the trainer to publish
and never see the bus or any sink.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import torch

from engine.telemetry.events import LayerSignal, SeedSnapshot


@dataclass
class StepResult:
    """What one optimisation step produced (the trainer has its loss already)."""

    samples: int
    grad_norm: float
    events: list[Any] = field(default_factory=list)


@dataclass
class EpochReport:
    """End-of-epoch evaluation and mechanism outcome."""

    metrics: dict[str, float]
    events: list[Any] = field(default_factory=list)
    seeds: tuple[SeedSnapshot, ...] = ()
    layers: tuple[LayerSignal, ...] = ()
    plateau: int = 0
    patience: int = 0


class Experiment(Protocol):
    """An experiment family plugged into :class:`engine.training.trainer.Trainer`."""

    device: torch.device

    def phases(self) -> list[tuple[str, int]]:
        """Ordered ``(phase name, epochs)``; total epochs is their sum."""
        ...

    def batches(self, epoch: int, phase: str) -> Iterator[Any]:
        """Training batches of one epoch (deterministic given saved RNG state)."""
        ...

    def compute_loss(self, batch: Any, step: int) -> torch.Tensor:
        """Forward pass of one batch: the scalar training loss (with its graph).

        The trainer checks it before anything is updated; on a non-finite loss
        :meth:`apply_update` is never called for this batch.
        """
        ...

    def apply_update(self, batch: Any, step: int, loss: torch.Tensor) -> StepResult:
        """Backward, optimizer step and mechanisms for the batch whose ``loss`` was just computed."""
        ...

    def scale_learning_rate(self, factor: float) -> None:
        """Multiply every main learning rate by ``factor`` from now on (kept in state_dict).

        Used by rollbacks (a lower rate after a divergence) and the learning-rate fault drill.
        """
        ...

    def end_epoch(self, epoch: int, phase: str) -> EpochReport:
        """Evaluate, run mechanisms, and report."""
        ...

    def parameter_count(self) -> int:
        """Number of model parameters (grows with structure)."""
        ...

    def learning_rate(self) -> float:
        """Current main learning rate."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (model, optimizer, mechanisms, RNG)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...

    # Optional hooks, looked up with getattr by the trainer:
    #   manifest() -> dict: what data went in (written to run_dir/manifest.json at start);
    #   write_artifacts(directory: Path) -> None: CSV/PNG/JSON artifacts, called at
    #     every end of a run (finished, diverged, interrupted) into run_dir/artifacts.
    #   watched_loss(phase) -> str: the EpochReport metric the trainer's divergence
    #     watch reads in that phase (default: the mean train loss, "train_loss").
    #   quality_metric(phase) -> str: the EpochReport metric (lower is better) that
    #     structural-change accounting compares before and after each
    #     StructuralChange (default "val_loss"; "" turns accounting off in that phase).


def scale_optimizer_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Multiply every param group's learning rate and the optimizer's default by ``factor``.

    The default matters for groups added later (seeds' children join the main
    optimizer with it), so a scaled run stays scaled. Group rates are saved in the optimizer's
    state_dict; the default is not, so families restore it from group 0 on load.
    """
    for group in optimizer.param_groups:
        group["lr"] *= factor
    optimizer.defaults["lr"] *= factor

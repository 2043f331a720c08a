"""Neurogenesis (Draelos et al. 2017): per-level thresholds, outlier gating, growth plans.

* Thresholds ``Th_L`` come from the base-trained model's own reconstruction
  errors through levels 1..L on base-class training data: the
  ``percentile``-th percentile of each level's per-sample MSE (default 95,
  see the family config). They are measured once after base training and
  stored (never hard-coded). Optionally (``per_class``) each class's own
  percentile is recorded when it is learned and ``Th_L`` is the highest of them.
* Gating compares *proportions*: a level grows while the fraction of the new
  class's samples whose through-level error exceeds ``Th_L`` is above
  ``max_fraction`` and the level has added fewer than ``cap`` units this stage.
* Growth is a pair of :class:`~engine.mechanisms.plans.GrowUnits` plans (encoder
  and mirrored decoder), applied by :func:`engine.surgery.apply_plan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from engine.mechanisms.plans import GrowUnits


def level_thresholds(errors: Sequence[Tensor], percentile: float) -> list[float]:
    """``Th_L`` per level: the ``percentile`` (0-100) of each level's per-sample errors [n]."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile {percentile} outside (0, 100]")
    out = []
    for e in errors:
        if e.numel() == 0:
            raise ValueError("no samples to derive a threshold from")
        out.append(float(torch.quantile(e.double(), percentile / 100.0)))
    return out


def outlier_mask(errors: Tensor, threshold: float) -> Tensor:
    """Bool [n]: samples whose error exceeds ``threshold`` (strictly)."""
    return errors > threshold


def outlier_fraction(errors: Tensor, threshold: float) -> float:
    """Proportion (0-1) of samples above ``threshold``; 0 for no samples."""
    return float(outlier_mask(errors, threshold).float().mean()) if errors.numel() else 0.0


@dataclass
class GrowthGate:
    """Decides how many units a level adds next, from an outlier proportion.

    ``max_fraction``: outlier proportion (0-1) above which a level grows;
    ``units_per_step``: units added per growth step; ``cap``: most units a
    level may add in one stage.
    """

    max_fraction: float
    units_per_step: int
    cap: int

    def __post_init__(self) -> None:
        if not 0 <= self.max_fraction < 1:
            raise ValueError(f"max_fraction {self.max_fraction} outside [0, 1)")
        if self.units_per_step < 1 or self.cap < 0:
            raise ValueError(f"units_per_step {self.units_per_step} < 1 or cap {self.cap} < 0")

    def needs_growth(self, fraction: float) -> bool:
        """Whether the proportion of outliers is above the limit."""
        return fraction > self.max_fraction

    def units_to_add(self, fraction: float, added_this_stage: int) -> int:
        """Units to add now (0: stop): a step, clipped to what the cap leaves."""
        if not self.needs_growth(fraction):
            return 0
        return max(0, min(self.units_per_step, self.cap - added_this_stage))


def growth_plans(paths: Sequence[tuple[str, str]], count: int, init: str = "kaiming") -> list[GrowUnits]:
    """One :class:`GrowUnits` per (producer, consumer) pair of a hidden layer.

    ``paths`` come from the model (e.g. ``StackedAutoencoder.level_paths``):
    the encoder layer and its mirrored decoder layer grow by the same ``count``.
    """
    return [GrowUnits(layer, nxt, count, init) for layer, nxt in paths]


THRESHOLD_MODES = ("base", "per_class")


class ThresholdStore:
    """The stored per-level thresholds and how they were derived (checkpointed).

    ``mode`` ``base``: :meth:`measure` on the base data sets ``Th_L`` once.
    ``per_class``: :meth:`measure_class` records each class's own percentile
    per level when it is learned, and ``Th_L`` is the highest over learned
    classes (Draelos et al. derive thresholds from the classes trained so far),
    so a class with more ink than the base classes raises the bar for later ones.
    """

    def __init__(self, mode: str = "base") -> None:
        if mode not in THRESHOLD_MODES:
            raise ValueError(f"threshold mode {mode!r}; allowed: {THRESHOLD_MODES}")
        self.mode = mode
        self.thresholds: list[float] = []
        self.percentile: float = 0.0
        self.samples: int = 0
        self.base_errors: list[dict[str, float]] = []
        self.per_class: dict[int, list[float]] = {}  # class -> its own Th_L per level

    @property
    def ready(self) -> bool:
        """Whether thresholds were measured."""
        return bool(self.thresholds)

    def measure(self, errors: Sequence[Tensor], percentile: float) -> list[float]:
        """Derive and store thresholds from per-level per-sample errors on base data.

        In ``per_class`` mode the pooled base figures are kept for reference
        (``base_errors``) but ``Th_L`` comes from :meth:`measure_class`.
        """
        pooled = level_thresholds(errors, percentile)
        self.percentile = float(percentile)
        self.samples = int(errors[0].numel())
        self.base_errors = [{"mean": float(e.mean()), "std": float(e.std()) if e.numel() > 1 else 0.0,
                             "max": float(e.max())} for e in errors]
        if self.mode == "base":
            self.thresholds = pooled
        return self.thresholds

    def measure_class(self, cls: int, errors: Sequence[Tensor], percentile: float) -> list[float]:
        """Record class ``cls``'s own per-level percentile (errors [n] per level); per_class: update Th_L."""
        self.per_class[int(cls)] = level_thresholds(errors, percentile)
        if self.mode == "per_class":
            self.percentile = float(percentile)
            self.thresholds = [max(v) for v in zip(*self.per_class.values())]
        return self.thresholds

    def state_dict(self) -> dict[str, Any]:
        """Plain data for checkpoints and ``thresholds.json``."""
        return {"mode": self.mode, "thresholds": list(self.thresholds), "percentile": self.percentile,
                "samples": self.samples, "base_errors": list(self.base_errors),
                "per_class": {str(c): list(v) for c, v in sorted(self.per_class.items())}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (checkpoints from before per-class thresholds load as ``base``)."""
        self.mode = str(state.get("mode", "base"))
        self.thresholds = [float(t) for t in state["thresholds"]]
        self.percentile = float(state["percentile"])
        self.samples = int(state["samples"])
        self.base_errors = [dict(e) for e in state["base_errors"]]
        self.per_class = {int(c): [float(t) for t in v] for c, v in state.get("per_class", {}).items()}

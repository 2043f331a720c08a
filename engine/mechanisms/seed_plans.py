"""Plans for seed lifecycle changes, applied by :mod:`engine.surgery`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GerminateSeed:
    """dormant -> training: the seed's child trains as an autoencoder."""

    seed: str
    reason: str = ""


@dataclass(frozen=True)
class BlendSeed:
    """training -> blending: alpha ramps up; the child trains on the task loss.

    With ``lr`` set the child joins the main optimizer as its own param group
    at that learning rate; with ``lr=None`` it keeps its own optimizer.
    """

    seed: str
    blend_steps: int
    reason: str = ""
    lr: float | None = None


@dataclass(frozen=True)
class FossilizeSeed:
    """active -> fossilized: the seed passed probation; its child is frozen (alpha stays 1)."""

    seed: str
    reason: str = ""


@dataclass(frozen=True)
class CullSeed:
    """-> failed: the seed's training failed or did not converge."""

    seed: str
    reason: str = ""

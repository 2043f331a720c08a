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
    """training -> blending: the child joins the main optimizer, alpha ramps up."""

    seed: str
    blend_steps: int
    reason: str = ""


@dataclass(frozen=True)
class CullSeed:
    """-> failed: the seed's training failed or did not converge."""

    seed: str
    reason: str = ""

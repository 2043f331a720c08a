"""Rank and dormancy measures of a layer's activations ``phi`` [n samples, d units].

Rank measures take the singular values ``s`` of ``phi`` (descending, >= 0):

* effective rank  = exp(-sum p_k ln p_k), p_k = s_k / sum s (unsquared; Roy & Vetterli);
* stable rank     = sum s^2 / s_1^2;
* approximate rank = smallest k whose cumulative s^2 reaches ``energy`` (99%) of the total.

All-zero (or empty) activations give 0 for every rank, never NaN. Singular
values come from the eigenvalues of the d x d Gram matrix in float64, which
is far cheaper than an SVD of the n x d matrix for n >> d and exact enough
for these summaries (eigenvalues below 1e-12 of the largest count as zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: Relative size below which a squared singular value counts as numerical zero.
_REL_EPS = 1e-12


def singular_values(phi: Tensor) -> Tensor:
    """Singular values of ``phi`` [n, d] (float64, descending, length min(n, d))."""
    if phi.numel() == 0:
        return torch.zeros(0, dtype=torch.float64)
    a = phi.detach().to(torch.float64)
    gram = a.T @ a if a.shape[0] >= a.shape[1] else a @ a.T  # [k, k], k = min(n, d)
    ev = torch.linalg.eigvalsh(gram).flip(0)  # ascending -> descending
    top = float(ev[0]) if ev.numel() else 0.0
    ev = torch.where(ev > _REL_EPS * max(top, 0.0), ev, torch.zeros_like(ev))
    return ev.sqrt()


def effective_rank(s: Tensor) -> float:
    """exp of the entropy of the normalised singular values; 0 when all are zero."""
    total = float(s.sum())
    if not total > 0:
        return 0.0
    p = s[s > 0] / total
    return float(math.exp(float(-(p * p.log()).sum())))


def stable_rank(s: Tensor) -> float:
    """sum s^2 / max s^2; 0 when all singular values are zero."""
    top = float(s.max()) if s.numel() else 0.0
    if not top > 0:
        return 0.0
    return float((s * s).sum()) / (top * top)


def approximate_rank(s: Tensor, energy: float = 0.99) -> int:
    """Smallest k with sum_{i<k} s_i^2 >= ``energy`` * sum s^2 (s descending); 0 for all-zero."""
    sq = s * s
    total = float(sq.sum())
    if not total > 0:
        return 0
    cum = torch.cumsum(sq, 0)
    # a tiny tolerance so exactly-reached thresholds (e.g. identity) are not missed by rounding
    return int((cum < energy * total * (1 - 1e-12)).sum()) + 1


def redo_scores(phi: Tensor) -> Tensor:
    """ReDo scores s_i = E|h_i| / mean_k E|h_k| per unit [d]; all zeros if the layer is silent."""
    m = phi.detach().abs().mean(0)  # [d]
    denom = m.mean()
    if not float(denom) > 0:
        return torch.zeros_like(m)
    return m / denom


def dead_fraction(phi: Tensor) -> float:
    """Fraction of units that are zero on every sample."""
    if phi.shape[1] == 0:
        return 0.0
    dead = (phi.detach() == 0).all(0)
    return float(dead.float().mean())


def dormant_fraction(phi: Tensor, tau: float) -> float:
    """Fraction of units whose ReDo score is <= ``tau`` (a silent layer is fully dormant)."""
    if phi.shape[1] == 0:
        return 0.0
    return float((redo_scores(phi) <= tau).float().mean())


@dataclass(frozen=True)
class LayerStats:
    """All probe diagnostics of one layer."""

    effective_rank: float
    stable_rank: float
    approximate_rank: int
    dead_ratio: float
    dormant_ratio: float


def layer_stats(phi: Tensor, tau: float, energy: float = 0.99) -> LayerStats:
    """Every measure above for one layer's probe activations ``phi`` [n, d]."""
    s = singular_values(phi)
    return LayerStats(effective_rank(s), stable_rank(s), approximate_rank(s, energy),
                      dead_fraction(phi), dormant_fraction(phi, tau))

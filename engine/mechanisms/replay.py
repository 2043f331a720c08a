"""Intrinsic replay: a Gaussian per class over the autoencoder's top hidden code.

For each class the mean ``mu`` [d] and covariance of its top-layer codes are
stored; the covariance is shrunk towards ``tr/d * I`` (``shrinkage`` in [0, 1])
and its eigenvalues are clamped at ``min_eig`` before the Cholesky factor
``L`` is taken, so one sample, identical samples or ``n < d`` never make it
singular. Sampling draws ``mu + L z`` with ``z ~ N(0, I)`` on a given
generator; the caller decodes the codes into images.

:func:`transported_codes` carries a class's samples across a change of the
network without its data: codes ``z`` [n, d] were decoded into images before
the change; re-encoding those images before (``before`` [n, d]) and after
(``after`` [n, d'], d' >= d when the top level grew) the change gives each
sample's drift ``after - before``, which is added to ``z``. Re-encoding alone
(``after`` as the new codes) would also apply the autoencoder's own
projection ``enc(dec(z)) != z`` at every stage, and that compounds: on 8x8
digits the base classes' covariance trace fell to 13-25% of the true one
after 8 stages.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def transported_codes(z: Tensor, before: Tensor, after: Tensor) -> Tensor:
    """``z`` [n, d] moved by the network's change: ``z + after[:, :d] - before``, new units' codes appended.

    ``before`` [n, d]: codes of ``dec(z)`` re-encoded before the change;
    ``after`` [n, d'] (d' >= d): the same images encoded after it. Units added
    at the top (columns ``d..d'-1``) have no earlier code, so their values are
    taken as they are. Unchanged network -> ``z`` exactly.
    """
    n, d = z.shape
    if before.shape != (n, d) or after.dim() != 2 or after.shape[0] != n or after.shape[1] < d:
        raise ValueError(f"z {tuple(z.shape)}, before {tuple(before.shape)} and after {tuple(after.shape)} "
                         "must be [n, d], [n, d] and [n, d' >= d]")
    return torch.cat([z + (after[:, :d] - before), after[:, d:]], 1)


class ClassGaussians:
    """Per-class mean and Cholesky factor of the top-code covariance."""

    def __init__(self, shrinkage: float = 0.05, min_eig: float = 1e-5) -> None:
        if not 0 <= shrinkage <= 1 or min_eig <= 0:
            raise ValueError(f"shrinkage {shrinkage} outside [0, 1] or min_eig {min_eig} <= 0")
        self.shrinkage, self.min_eig = shrinkage, min_eig
        self.mean: dict[int, Tensor] = {}  # class -> [d]
        self.chol: dict[int, Tensor] = {}  # class -> [d, d] lower triangular
        self.count: dict[int, int] = {}

    @property
    def classes(self) -> list[int]:
        """Classes with statistics, sorted."""
        return sorted(self.mean)

    def covariance(self, cls: int) -> Tensor:
        """The regularised covariance ``L L^T`` [d, d] of ``cls``."""
        lo = self.chol[cls]
        return lo @ lo.T

    def fit(self, cls: int, codes: Tensor) -> None:
        """Store the statistics of ``codes`` [n, d] (n >= 1) for ``cls``, replacing old ones."""
        if codes.dim() != 2 or len(codes) == 0:
            raise ValueError(f"codes must be [n >= 1, d], got {tuple(codes.shape)}")
        c = codes.detach().double().cpu()
        mu = c.mean(0)
        centred = c - mu
        n, d = c.shape
        cov = centred.T @ centred / max(n - 1, 1)  # [d, d]
        target = torch.eye(d, dtype=cov.dtype) * (torch.trace(cov) / d)
        cov = (1 - self.shrinkage) * cov + self.shrinkage * target
        evals, evecs = torch.linalg.eigh((cov + cov.T) / 2)
        cov = (evecs * evals.clamp_min(self.min_eig)) @ evecs.T
        self.mean[cls] = mu.float()
        self.chol[cls] = torch.linalg.cholesky((cov + cov.T) / 2).float()
        self.count[cls] = int(n)

    def sample(self, cls: int, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes [n, d] drawn from class ``cls``'s Gaussian (CPU, float32)."""
        mu, lo = self.mean[cls], self.chol[cls]
        z = torch.randn(n, len(mu), generator=generator)
        return mu + z @ lo.T

    def state_dict(self) -> dict[str, Any]:
        """Statistics and settings (checkpointed)."""
        return {"shrinkage": self.shrinkage, "min_eig": self.min_eig,
                "mean": {c: m.clone() for c, m in self.mean.items()},
                "chol": {c: v.clone() for c, v in self.chol.items()}, "count": dict(self.count)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.shrinkage, self.min_eig = float(state["shrinkage"]), float(state["min_eig"])
        self.mean = {int(c): m.clone() for c, m in state["mean"].items()}
        self.chol = {int(c): v.clone() for c, v in state["chol"].items()}
        self.count = {int(c): int(n) for c, n in state["count"].items()}

"""ReDo (Sokar et al. 2023): recycle dormant units every ``every`` steps.

Score of unit i of a layer on a batch: s_i = E|h_i| / mean_k E|h_k|. A unit is
tau-dormant when s_i <= tau. Every ``every`` steps the dormant units of every
hidden layer are re-initialised: incoming weights re-drawn, bias 0, outgoing
weights zeroed, optimizer moments reset (a :class:`ReinitUnits` plan, no bias
fold). Scores are taken on a held-out batch the family provides (``probe``),
since a training mini-batch of a few samples is too small to call a unit dormant.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from engine.diagnostics.rank import redo_scores
from engine.mechanisms.plans import ReinitUnits
from engine.mechanisms.replacement import register_mechanism


def dormant_units(phi: Tensor, tau: float) -> list[int]:
    """Indices of the tau-dormant units of activations ``phi`` [batch, units]."""
    return (redo_scores(phi) <= tau).nonzero().flatten().tolist()


@register_mechanism("redo")
class ReDo:
    """Periodic re-initialisation of tau-dormant units of the hidden layers of ``model``."""

    def __init__(self, model: nn.Module, pairs: list[tuple[str, str]], tau: float = 0.1,
                 every: int = 1000, init: str = "kaiming") -> None:
        self.pairs, self.tau, self.every, self.init = list(pairs), tau, every, init
        self.replaced_total = [0] * len(self.pairs)
        self.last_scores: list[np.ndarray] = [
            np.zeros(model.get_submodule(a).out_features) for a, _ in self.pairs]

    def observe(self, step: int, hidden: list[Tensor]) -> None:
        """Nothing per step: ReDo scores on a held-out batch when it is due."""

    @torch.no_grad()
    def plans(self, step: int, probe: Callable[[], list[Tensor]] | None = None) -> list[ReinitUnits]:
        """Every ``every`` steps (after step every-1, 2*every-1, ...): reinit the dormant units."""
        if (step + 1) % self.every or probe is None:
            return []
        out: list[ReinitUnits] = []
        for i, ((path, next_path), h) in enumerate(zip(self.pairs, probe())):
            self.last_scores[i] = redo_scores(h).cpu().numpy().copy()
            idx = dormant_units(h, self.tau)
            if idx:
                out.append(ReinitUnits(path, next_path, idx, zero_outgoing=True, init=self.init))
                self.replaced_total[i] += len(idx)
        return out

    def unit_signals(self) -> dict[str, list[np.ndarray]]:
        """ReDo scores of the last check (per hidden layer)."""
        return {"redo_score": [s.copy() for s in self.last_scores]}

    def state_dict(self) -> dict[str, Any]:
        """Totals and the last scores (as CPU tensors: checkpoints load with weights_only=True)."""
        return {"replaced_total": list(self.replaced_total),
                "last_scores": [torch.from_numpy(s.copy()) for s in self.last_scores]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.replaced_total = [int(c) for c in state["replaced_total"]]
        self.last_scores = [s.detach().cpu().numpy().copy() if isinstance(s, Tensor) else np.asarray(s).copy()
                            for s in state["last_scores"]]

"""Continual backprop (Dohare et al. 2024): replace low-utility mature hidden units.

Per hidden layer with activations h [batch, n] and outgoing weights W_out [next, n]:

* running mean activation  a <- eta a + (1 - eta) mean_b h;
* contribution utility      u <- eta u + (1 - eta) mean_b |h| * sum_k |W_out[k, :]|;
  ``adaptable_contribution`` instead uses mean_b |h - a_hat| * sum_k |W_out[k, :]|
  / sum_j |W_in[:, j]| (a_hat = bias-corrected a): a unit's deviation from its own
  mean contributes, and units with large input weights (slow to adapt) score lower;
* every unit ages by one step; units older than ``maturity`` are eligible;
* a fractional counter grows by ``rate`` x (#eligible) per step; when it reaches
  1 the floor of it many eligible units with the lowest bias-corrected utility
  (u / (1 - eta^age)) are replaced.

A replacement is a :class:`ReinitUnits` plan: incoming weights re-drawn from the
init distribution, bias 0, outgoing weights 0, the units' mean contribution
W_out[:, idx] @ a_hat[idx] folded into the next layer's bias (so the mean output
is unchanged), and their optimizer moments reset by the surgery. The units'
utility, mean activation and age restart at 0.

Per step the running statistics of all layers move with ``torch._foreach_*``
calls (the same element-wise kernels, one Python call for every layer), and
the count of mature units is kept on the host (:class:`_YoungUnits`), so a
step costs no device-to-host sync until a counter reaches 1.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from engine.mechanisms.plans import ReinitUnits
from engine.mechanisms.replacement import register_mechanism

UTILITIES = ("contribution", "adaptable_contribution")


@register_mechanism("cbp")
class ContinualBackprop:
    """Utility tracking and generate-and-test replacement for the hidden layers of ``model``."""

    def __init__(self, model: nn.Module, pairs: list[tuple[str, str]], rate: float = 1e-4,
                 maturity: int = 100, decay: float = 0.99, utility: str = "contribution",
                 init: str = "kaiming") -> None:
        if utility not in UTILITIES:
            raise ValueError(f"utility must be one of {UTILITIES}, not {utility!r}")
        self.pairs, self.rate, self.maturity, self.decay = list(pairs), rate, maturity, decay
        self.utility, self.init = utility, init
        self._lin = [(model.get_submodule(a), model.get_submodule(b)) for a, b in pairs]
        sizes = [lin.out_features for lin, _ in self._lin]
        dev = self._lin[0][0].weight.device if self._lin else torch.device("cpu")  # next to h (CUDA too)
        self.util = [torch.zeros(n, device=dev) for n in sizes]      # [n] contribution utility
        self.mean_act = [torch.zeros(n, device=dev) for n in sizes]  # [n] running mean activation (biased)
        self.age = [torch.zeros(n, dtype=torch.long, device=dev) for n in sizes]  # [n] steps since (re)init
        self.counter = [0.0] * len(sizes)                 # fractional replacement counters
        self.replaced_total = [0] * len(sizes)
        self._young = [_YoungUnits() for _ in sizes]  # host-side count of immature units

    @torch.no_grad()
    def observe(self, step: int, hidden: list[Tensor]) -> None:
        """Update ages, mean activations and utilities from one step's activations."""
        eta, rest = self.decay, 1.0 - self.decay
        n = len(hidden)  # may cover only the first layers (tests)
        if n == 0:  # nothing observed (foreach ops refuse empty lists)
            return
        hs = [h.detach() for h in hidden]  # [batch, units] each
        ages, means, utils = self.age[:n], self.mean_act[:n], self.util[:n]
        torch._foreach_add_(ages, 1)
        for young in self._young[:n]:
            young.tick(self.maturity)
        torch._foreach_mul_(means, eta)
        torch._foreach_add_(means, [h.mean(0) for h in hs], alpha=rest)
        out_mag = [nxt.weight.abs().sum(0) for _, nxt in self._lin[:n]]  # [n]: sum over the next layer's outputs
        if self.utility == "contribution":
            inst = [h.abs().mean(0) for h in hs]
            torch._foreach_mul_(inst, out_mag)
        else:
            inst = []
            for i, h in enumerate(hs):
                a_hat = self.mean_act[i] / self._correction(i)
                in_mag = self._lin[i][0].weight.abs().sum(1).clamp_min(1e-12)  # [n]
                inst.append((h - a_hat).abs().mean(0).mul_(out_mag[i]).div_(in_mag))
        torch._foreach_mul_(utils, eta)
        torch._foreach_add_(utils, inst, alpha=rest)

    def _correction(self, i: int, idx: Tensor | None = None) -> Tensor:
        """Bias correction 1 - eta^age of the running averages (1 for age 0 to avoid 0/0)."""
        age = self.age[i] if idx is None else self.age[i][idx]
        corr = 1.0 - torch.pow(self.decay, age.to(torch.float32))
        return torch.where(age > 0, corr, torch.ones_like(corr))

    @torch.no_grad()
    def plans(self, step: int, probe: Callable[[], list[Tensor]] | None = None) -> list[ReinitUnits]:
        """Advance the counters and return the replacements due now (possibly none)."""
        out: list[ReinitUnits] = []
        for i, (path, next_path) in enumerate(self.pairs):
            n_mature = self.age[i].numel() - self._young[i].count(self.age[i], self.maturity)
            self.counter[i] += self.rate * n_mature
            if self.counter[i] < 1.0:
                continue
            k = int(self.counter[i])
            self.counter[i] -= k
            k = min(k, n_mature)
            if k == 0:
                continue
            cand = (self.age[i] > self.maturity).nonzero().flatten()  # [n_mature]
            score = self.util[i][cand] / self._correction(i, cand)
            idx = cand[torch.topk(score, k, largest=False).indices]
            nxt = self._lin[i][1]
            a_hat = self.mean_act[i][idx] / self._correction(i, idx)          # [k]
            fold = (nxt.weight[:, idx] @ a_hat.to(nxt.weight.dtype)).tolist()  # [next_out]
            out.append(ReinitUnits(path, next_path, idx.tolist(), zero_outgoing=True,
                                   fold_bias=fold, init=self.init))
            self.util[i][idx] = 0.0
            self.mean_act[i][idx] = 0.0
            self.age[i][idx] = 0
            self._young[i].born(self.age[i], k)
            self.replaced_total[i] += k
        return out

    def bias_corrected_utility(self) -> list[Tensor]:
        """u / (1 - eta^age) per layer [n] (what replacement ranks by)."""
        return [self.util[i] / self._correction(i) for i in range(len(self.util))]

    def unit_signals(self) -> dict[str, list[np.ndarray]]:
        """Per-unit bias-corrected utilities, per hidden layer."""
        return {"cbp_utility": [u.cpu().numpy().copy() for u in self.bias_corrected_utility()]}

    def state_dict(self) -> dict[str, Any]:
        """Utilities, mean activations, ages, counters and totals."""
        return {"util": [t.clone() for t in self.util], "mean_act": [t.clone() for t in self.mean_act],
                "age": [t.clone() for t in self.age], "counter": list(self.counter),
                "replaced_total": list(self.replaced_total)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.util = [t.clone() for t in state["util"]]
        self.mean_act = [t.clone() for t in state["mean_act"]]
        self.age = [t.clone() for t in state["age"]]
        self.counter = [float(c) for c in state["counter"]]
        self.replaced_total = [int(c) for c in state["replaced_total"]]
        self._young = [_YoungUnits() for _ in self.age]


class _YoungUnits:
    """Host-side count of one layer's units with age <= maturity, without reading the age tensor.

    Ages only grow by one per :meth:`ContinualBackprop.observe` and drop to 0
    on replacement, so the immature units are a queue of (tick of birth, count).
    The queue is rebuilt from the tensor (one sync) whenever the age tensor is
    not the one it was built from (a fresh mechanism, a load, a test assigning
    ages); code that edits ages in place must assign a new tensor.
    """

    def __init__(self) -> None:
        self.ticks = 0
        self.queue: deque[list[int]] = deque()  # [birth tick, units], oldest first
        self.young = 0
        self.source: Tensor | None = None  # the age tensor the queue describes

    def tick(self, maturity: int) -> None:
        """One observe: every unit is a step older; drop the ones now mature (age > maturity)."""
        self.ticks += 1
        while self.queue and self.ticks - self.queue[0][0] > maturity:
            self.young -= self.queue.popleft()[1]

    def count(self, age: Tensor, maturity: int) -> int:
        """Units of ``age`` [n] with age <= ``maturity``."""
        if self.source is not age:
            ages, counts = torch.unique(age[age <= maturity], return_counts=True)  # ascending ages
            self.queue = deque([self.ticks - int(a), int(c)] for a, c in zip(ages.flip(0), counts.flip(0)))
            self.young = int(counts.sum())
            self.source = age
        return self.young

    def born(self, age: Tensor, units: int) -> None:
        """``units`` mature units of ``age`` were just reset to age 0 (in place)."""
        if self.source is age:
            self.queue.append([self.ticks, units])
            self.young += units

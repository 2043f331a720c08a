"""Per-unit bookkeeping of one unit group for neuron apoptosis: utility, age, fade state, lineage.

A :class:`UnitGroup` mirrors the units of one resizable group (FFN units of
``blocks.{i}.mlp`` or attention value channels of ``blocks.{i}.attn``)
position by position. Its methods that emit plans (:meth:`prune`,
:meth:`clone`, :meth:`fade_to`) update the mirror at once, as if the plan had
been applied, so later plans of the same step index the group as it will be
then; the caller must apply every emitted plan, in order.

* **Utility**: ``u <- decay u + (1 - decay) mean|h| * sum_k |W_next[k, j]|`` per
  recorded step (``h`` the unit's gained output, ``W_next`` the consuming
  layer's weight), bias-corrected like Adam: ``u / (1 - decay^n)`` with ``n``
  the updates since the unit's birth (0 while ``n = 0``).
* **Age**: steps since birth (original units are born at step 0).
* **Lineage**: one :class:`LineageRecord` per unit ever alive, ids unique per
  group (0..n0-1 the original units, parent id -1, generation 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from engine.mechanisms.plans import CloneUnits, PruneUnits, SetUnitGain

QUANTILES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)

# per-position lists of a UnitGroup, kept aligned with the model's units
_PER_UNIT = ("ids", "birth", "born_upd", "fade_start", "fade_from", "gain", "head", "slot")


@dataclass
class LineageRecord:
    """One unit's life: ``death_step`` -1 and ``cause`` "" while it is alive."""

    group: str
    unit_id: int
    birth_step: int
    parent_id: int
    generation: int
    death_step: int = -1
    cause: str = ""


class UnitGroup:
    """Mirror of one unit group's units (see the module docstring)."""

    def __init__(self, model: nn.Module, name: str, kind: str, layer: str, next_layer: str,
                 buffers: tuple[str, ...], decay: float) -> None:
        self.name, self.kind, self.layer, self.next_layer, self.buffers = name, kind, layer, next_layer, buffers
        self.owner = model.get_submodule(name)       # holds last_abs and the per-unit buffers
        self.lin: nn.Linear = model.get_submodule(layer)     # type: ignore[assignment]
        self.nxt: nn.Linear = model.get_submodule(next_layer)  # type: ignore[assignment]
        self.decay = decay
        n = self.lin.out_features
        self.n0 = n
        self.ids = list(range(n))          # [n] unit id per position
        self.birth = [0] * n               # [n] birth step
        self.born_upd = [0] * n            # [n] value of ``updates`` at birth
        self.fade_start = [-1] * n         # [n] step the fade began, -1 if not fading
        self.fade_from = [1.0] * n         # [n] gain when the fade began
        # Mirrors of the per-unit buffers: plans of one step are decided before any is
        # applied, so the model's buffers may still show the previous layout.
        self.gain: list[float] = self.owner.gain.tolist()                            # [n]
        self.head: list[int] = self.owner.v_head.tolist() if kind == "attn" else []  # [n] attn only
        self.slot: list[int] = self.owner.v_slot.tolist() if kind == "attn" else []  # [n] attn only
        self.pending: Tensor | None = None  # the weight a resize plan was emitted against
        self.util = torch.zeros(n, device=self.lin.weight.device)  # [n] biased running utility
        self.updates = 0
        self.born_total = self.died_total = 0
        self.lineage = [LineageRecord(name, i, 0, -1, 0) for i in range(n)]

    # -- measurements ----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    @torch.no_grad()
    def observe(self) -> bool:
        """Fold the owner's ``last_abs`` [n] into the utilities; False if nothing was recorded."""
        act = getattr(self.owner, "last_abs", None)
        if act is None:
            return False
        if act.numel() != len(self.ids):
            raise RuntimeError(f"apoptosis: {self.name}.last_abs has {act.numel()} entries, the group "
                               f"{len(self.ids)} units; record after the previous step's plans were applied")
        inst = act.to(self.util.dtype) * self.nxt.weight.detach().abs().sum(0)  # [n]: |h| x sum_k |W_next[k, j]|
        self.util.mul_(self.decay).add_(inst, alpha=1.0 - self.decay)
        self.updates += 1
        return True

    def utility(self) -> Tensor:
        """Bias-corrected utility [n] (0 for units without an update yet)."""
        n = torch.tensor([self.updates - b for b in self.born_upd], dtype=torch.float64)
        corr = torch.where(n > 0, 1.0 - self.decay ** n, torch.ones_like(n))
        return self.util / corr.to(self.util)

    def ages(self, step: int) -> list[int]:
        """Age in steps per position."""
        return [step - b for b in self.birth]

    def alive(self) -> list[int]:
        """Positions of units not fading."""
        return [p for p, f in enumerate(self.fade_start) if f < 0]

    def mature(self, step: int, maturity: int) -> list[int]:
        """Positions of units not fading whose age is at least ``maturity``."""
        return [p for p in self.alive() if step - self.birth[p] >= maturity]

    def heads(self) -> list[int] | None:
        """Head of each attention value channel (``v_head``), None for FFN groups."""
        return self.head if self.kind == "attn" else None

    def lowest(self, positions: list[int], k: int, util: Tensor | None = None) -> list[int]:
        """Up to ``k`` of ``positions`` with the lowest utility; an attention head keeps >= 1 channel not fading."""
        if k <= 0 or not positions:
            return []
        vals = (self.utility() if util is None else util).tolist()  # one host copy, not one sync per unit
        order = sorted(positions, key=lambda p: (vals[p], p))
        heads = self.heads()
        if heads is None:
            return order[:k]
        left: dict[int, int] = {}
        for p in self.alive():
            left[heads[p]] = left.get(heads[p], 0) + 1
        out = []
        for p in order:
            if len(out) == k:
                break
            if left[heads[p]] > 1:
                left[heads[p]] -= 1
                out.append(p)
        return out

    def best(self, k: int) -> list[int]:
        """``k`` parents: units not fading by descending utility (cycling if ``k`` exceeds them)."""
        alive = self.alive()
        if k <= 0 or not alive:
            return []
        vals = self.utility().tolist()
        order = sorted(alive, key=lambda p: (-vals[p], p))
        return [order[i % len(order)] for i in range(k)]

    # -- plans (the mirror is updated as if they were applied) -----------------------
    def prune(self, positions: list[int], step: int, cause: str) -> PruneUnits:
        """Remove units at ``positions``; their lineage records die at ``step`` of ``cause``."""
        gone = set(positions)
        for p in gone:
            rec = self.lineage[self.ids[p]]
            rec.death_step, rec.cause = step, cause
        keep = [p for p in range(len(self.ids)) if p not in gone]
        for attr in _PER_UNIT:
            old = getattr(self, attr)
            setattr(self, attr, [old[p] for p in keep] if old else old)
        self.pending = self.lin.weight if self.pending is None else self.pending
        self.util = self.util[torch.tensor(keep, dtype=torch.long, device=self.util.device)]
        self.died_total += len(gone)
        return PruneUnits(self.layer, self.next_layer, tuple(sorted(gone)), self.buffers)

    def clone(self, parents: list[int], step: int, noise: float) -> CloneUnits:
        """Append one child per parent position (new gain 1, a parent's head, a fresh slot)."""
        heads = self.heads()
        top: dict[int, int] = {}
        for h, s in zip(self.head, self.slot):
            top[h] = max(top.get(h, -1), s)
        values: dict[str, list[float]] = {"gain": [], "v_head": [], "v_slot": []}
        for p in parents:
            pid = self.ids[p]
            rec = LineageRecord(self.name, len(self.lineage), step, pid, self.lineage[pid].generation + 1)
            self.lineage.append(rec)
            self.ids.append(rec.unit_id)
            values["gain"].append(1.0)
            if heads is not None:  # the parent's head, at 1 + the head's highest slot
                top[heads[p]] += 1
                values["v_head"].append(heads[p])
                values["v_slot"].append(top[heads[p]])
        self.gain += values["gain"]
        self.head += values["v_head"]
        self.slot += values["v_slot"]
        self.pending = self.lin.weight if self.pending is None else self.pending
        k = len(parents)
        self.birth += [step] * k
        self.born_upd += [self.updates] * k
        self.fade_start += [-1] * k
        self.fade_from += [1.0] * k
        self.util = torch.cat([self.util, self.util.new_zeros(k)])
        self.born_total += k
        bufvals = tuple(tuple(values[b.rpartition(".")[2]]) for b in self.buffers)
        return CloneUnits(self.layer, self.next_layer, tuple(parents), noise, self.buffers, bufvals)

    def start_fade(self, positions: list[int], step: int) -> None:
        """Mark ``positions`` as fading from ``step`` on (from their current gain)."""
        for p in positions:
            self.fade_start[p], self.fade_from[p] = step, self.gain[p]

    def fading(self) -> list[int]:
        """Positions of fading units."""
        return [p for p, f in enumerate(self.fade_start) if f >= 0]

    def fade_to(self, positions: list[int], values: list[float]) -> SetUnitGain:
        """Set the gains of fading ``positions`` (the model's buffer, once the plan is applied)."""
        for p, v in zip(positions, values):
            self.gain[p] = v
        return SetUnitGain(f"{self.name}.gain", tuple(positions), tuple(values))

    # -- reporting and state -----------------------------------------------------------
    def summary(self, step: int) -> dict[str, Any]:
        """Alive / fading counts, born / died totals, utility and age quantiles, deepest generation."""
        alive = self.alive()
        idx = torch.tensor(alive, dtype=torch.long)
        util = self.utility().detach().cpu()[idx].double()
        age = torch.tensor(self.ages(step), dtype=torch.float64)[idx]
        q = torch.tensor(QUANTILES, dtype=torch.float64)
        return {"alive": len(alive), "fading": len(self) - len(alive), "units": len(self),
                "initial": self.n0, "born": self.born_total, "died": self.died_total,
                "utility_quantiles": torch.quantile(util, q).tolist() if alive else [0.0] * len(q),
                "age_quantiles": torch.quantile(age, q).tolist() if alive else [0.0] * len(q),
                "max_generation": max((self.lineage[self.ids[p]].generation for p in alive), default=0)}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: per-position lists, utilities, counters, lineage."""
        return {**{a: list(getattr(self, a)) for a in _PER_UNIT},
                "util": self.util.detach().cpu().clone(), "updates": self.updates, "n0": self.n0,
                "born_total": self.born_total, "died_total": self.died_total,
                "lineage": [asdict(r) for r in self.lineage]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the model must already have the saved unit count)."""
        n = len(state["ids"])
        if n != self.lin.out_features:
            raise ValueError(f"apoptosis state of {self.name} has {n} units, the model {self.lin.out_features}; "
                             "resize the model to the checkpoint's unit counts first")
        for attr in _PER_UNIT:
            setattr(self, attr, list(state[attr]))
        self.pending = None
        self.util = state["util"].clone().to(self.lin.weight.device)
        self.updates, self.n0 = int(state["updates"]), int(state["n0"])
        self.born_total, self.died_total = int(state["born_total"]), int(state["died_total"])
        self.lineage = [LineageRecord(**r) for r in state["lineage"]]

"""Neuron apoptosis in a char transformer: units die, regrow and grow while the model trains.

The mechanism watches every unit group of a
:class:`~engine.models.char_transformer.CharTransformer` (attention value
channels ``blocks.{i}.attn`` and FFN units ``blocks.{i}.mlp``), keeps each
unit's utility, age and lineage (:mod:`engine.mechanisms.apoptosis_units`), and
returns plans (:class:`PruneUnits`, :class:`CloneUnits`, :class:`SetUnitGain`)
for the groups its layer pattern selects (:mod:`engine.mechanisms.apoptosis_patterns`)
according to its strategy (:mod:`engine.mechanisms.apoptosis_strategies`).

Contract with the experiment family, per training step ``step`` (0, 1, ...)::

    mech = Apoptosis(model, cfg, generator)            # cfg: ApoptosisConfig
    model.set_recording(mech.wants_activity(step))     # before the step's forward
    ... forward, backward, optimizer.step() ...
    for plan in mech.step(step, probe):                # after the optimizer step
        engine.surgery.apply_plan(model, optimizer, plan, generator)   # all, in order
    for rec in mech.records(): ...                     # ApoptosisRecord -> StructuralChange

* :meth:`step` first folds the forward's ``last_abs`` into the utilities (a few
  vector ops per group; skipped when nothing was recorded), then returns the
  strategy's plans, usually ``[]``. The mechanism updates its mirror of the
  units as if every returned plan were applied, so the family must apply them
  all, in order, before the next forward; a mismatch is detected at the next
  call (RuntimeError).
* ``probe`` (only the ``functional`` strategy uses it, only on action steps) is
  a callable returning the probe batch: token ids [B, T] or a tuple whose first
  element they are (at most ``probe_batch`` rows are used).
* ``generator`` is the one the family passes to ``apply_plan`` (clone noise);
  the mechanism draws nothing itself but saves and restores its state in
  :meth:`state_dict` so a resumed run clones exactly as the original.
* :meth:`records` drains what happened, at most one record per group per kind
  per action step: ``apoptosis`` (deaths), ``regrow`` (replacement births),
  ``grow`` (growth births). :meth:`summaries` and :meth:`lineage` report state.
* Structural edits of the unit groups must come from this mechanism (the
  mirror would go out of sync otherwise); :meth:`drill` returns the plans of a
  "broken mechanism" fault drill for that reason.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from engine.errors import ParameterError
from engine.mechanisms.apoptosis_config import ApoptosisConfig
from engine.mechanisms.apoptosis_patterns import group_rates
from engine.mechanisms.apoptosis_strategies import get_strategy, kill
from engine.mechanisms.apoptosis_units import UnitGroup
from engine.mechanisms.plans import Plan

__all__ = ["Apoptosis", "ApoptosisConfig", "ApoptosisRecord"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApoptosisRecord:
    """What the mechanism did to one group at one step.

    ``kind``: ``apoptosis`` (units died), ``regrow`` (replacement units born) or
    ``grow`` (growth units born); ``units``: how many; ``unit_ids``: their ids
    in the group's lineage; ``reason``: a one-line human explanation.
    """

    kind: str
    group: str
    units: int
    step: int
    reason: str
    unit_ids: tuple[int, ...] = ()


class Apoptosis:
    """Utility, age and lineage of every unit group, and the strategy that prunes and grows them."""

    def __init__(self, model: nn.Module, cfg: ApoptosisConfig, generator: torch.Generator | None = None) -> None:
        self.model, self.cfg, self.generator = model, cfg, generator
        if not callable(getattr(model, "unit_layers", None)):
            raise ParameterError("model", type(model).__name__, "a model with unit_layers(), e.g. CharTransformer")
        layers = model.unit_layers()  # type: ignore[operator]
        self.groups = {u.name: UnitGroup(model, u.name, u.kind, u.layer, u.next_layer, u.buffers,
                                         cfg.utility_decay) for u in layers}
        self.rate = group_rates(cfg.layer_pattern, [(u.name, u.kind, u.block) for u in layers], cfg.layer_rates)
        self.strategy = get_strategy(cfg.apoptosis_strategy)()
        self.last_step = 0
        self._records: list[ApoptosisRecord] = []
        # Steps of recording before apoptosis_start after which the running average's
        # oldest samples weigh < 1%: earlier activity would not change any decision.
        self._warmup = math.ceil(math.log(0.01) / math.log(cfg.utility_decay))

    # -- per step ------------------------------------------------------------------------
    def wants_activity(self, step: int) -> bool:
        """Whether the units should record ``last_abs`` on ``step``'s forward (``set_recording``)."""
        return self.strategy.name != "none" and step >= self.cfg.apoptosis_start - self._warmup

    def step(self, step: int, probe: Callable[[], Any] | None = None) -> list[Plan]:
        """Update utilities from the recorded forward and return the plans for ``step`` (usually none)."""
        self._check_sync()
        self.last_step = step
        if self.strategy.name == "none":
            return []
        for g in self.groups.values():
            g.observe()
        return self.strategy.plans(self, step, probe)

    def _check_sync(self) -> None:
        for g in self.groups.values():
            # A resize replaces the weight Parameter, so the one the plans saw must be gone.
            if len(g) != g.lin.out_features or (g.pending is not None and g.lin.weight is g.pending):
                raise RuntimeError(f"apoptosis: {g.layer} has {g.lin.out_features} units but the mechanism "
                                   f"expects {len(g)} (or its plans were not applied); apply every plan "
                                   "step() returned, in order, with engine.surgery.apply_plan")
            g.pending = None

    def drill(self, step: int, fraction: float) -> list[Plan]:
        """Fault drill: plans removing ``fraction`` of every selected group's highest-utility units at once.

        What a broken mechanism would do: maturity and ``min_unit_fraction`` are
        ignored (a group keeps >= 1 unit, a head >= 1 channel). Call it after
        :meth:`step`'s plans were applied and apply these the same way; the deaths
        are reported as ``apoptosis`` records with a "fault drill" reason (cause "drill").
        """
        if not 0 < fraction < 1:
            raise ParameterError("fraction", fraction, "a fraction in (0, 1)")
        self._check_sync()
        out: list[Plan] = []
        for g, _ in self.selected():
            alive = g.alive()
            k = min(round(fraction * len(alive)), len(alive) - 1)
            dead = g.lowest(alive, k, -g.utility())  # lowest of -utility: the most useful units
            out += kill(self, g, dead, step, "drill", f"fault drill: {len(dead)} highest-utility units killed at once")
        return out

    # -- used by the strategies ------------------------------------------------------------
    def selected(self) -> list[tuple[UnitGroup, float]]:
        """(group, rate multiplier) of every group the pattern (and layer_rates) selects."""
        return [(g, self.rate[n]) for n, g in self.groups.items() if self.rate[n] > 0]

    def record(self, kind: str, group: str, units: int, step: int, reason: str, ids: list[int]) -> None:
        """Queue an :class:`ApoptosisRecord` for :meth:`records`."""
        self._records.append(ApoptosisRecord(kind, group, units, step, reason, tuple(ids)))
        log.debug("step %d: %s %s x%d (%s)", step, kind, group, units, reason)

    def probe_ids(self, probe: Callable[[], Any] | None) -> Tensor:
        """Token ids [<= probe_batch, T] of the probe batch ``probe`` returns."""
        if probe is None:
            raise ParameterError("probe", None, "a callable returning the probe batch (token ids [B, T] or "
                                 "(ids, targets)); the functional strategy measures ablations on it")
        batch = probe() if callable(probe) else probe
        idx = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(idx, Tensor) or idx.dim() != 2:
            raise ParameterError("probe", type(idx).__name__, "token ids shaped [B, T]")
        return idx[: self.cfg.probe_batch]

    # -- reporting -------------------------------------------------------------------------
    def records(self) -> list[ApoptosisRecord]:
        """What happened since the last call (drained)."""
        out, self._records = self._records, []
        return out

    def rates(self) -> dict[str, float]:
        """Rate multiplier of each selected group (unselected groups are left out)."""
        return {n: r for n, r in self.rate.items() if r > 0}

    def summaries(self) -> dict[str, dict[str, Any]]:
        """Per group: alive (not fading), fading, units, initial, born, died, utility_quantiles and
        age_quantiles (at :data:`~engine.mechanisms.apoptosis_units.QUANTILES`), max_generation, rate."""
        return {n: {**g.summary(self.last_step), "rate": self.rate[n]} for n, g in self.groups.items()}

    def lineage(self) -> list[dict[str, Any]]:
        """Every unit ever alive: group, unit_id, birth_step, parent_id (-1: original), generation,
        death_step (-1: alive) and cause ("": alive, "apoptosis": removed at once, "faded": removed
        after its fade)."""
        return [asdict(r) for g in self.groups.values() for r in g.lineage]

    def alive_ids(self) -> dict[str, list[int]]:
        """Unit id at each position of each group (the model's current order)."""
        return {n: list(g.ids) for n, g in self.groups.items()}

    # -- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Per-group state, pending records, last step and the generator's state."""
        return {"groups": {n: g.state_dict() for n, g in self.groups.items()},
                "records": [asdict(r) for r in self._records], "last_step": self.last_step,
                "generator": None if self.generator is None else self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the model must already have the checkpoint's unit counts."""
        if set(state["groups"]) != set(self.groups):
            raise ParameterError("state['groups']", sorted(state["groups"]),
                                 f"the model's unit groups {sorted(self.groups)}")
        for n, g in self.groups.items():
            g.load_state_dict(state["groups"][n])
        self._records = [ApoptosisRecord(**{**r, "unit_ids": tuple(r["unit_ids"])}) for r in state["records"]]
        self.last_step = int(state["last_step"])
        if self.generator is not None and state.get("generator") is not None:
            self.generator.set_state(state["generator"])

"""Model surgery: apply mechanism plans (:mod:`engine.mechanisms.plans`) to model and optimizer.

* Grow / prune / clone replace ``weight``/``bias`` by new ``nn.Parameter``
  objects, update ``in_features``/``out_features``, put each new Parameter at
  the old one's position in its param group and move its optimizer state to
  the new key, slicing / zero-extending every param-shaped state tensor along
  the same dim (kept units keep their state exactly, new units get zeros, 0-d
  state such as Adam's ``step`` is kept). The optimizer is never rebuilt.
  Per-unit buffers named by the plan are resized with the units
  (:mod:`engine.surgery_units` holds these unit operations).
* Reinit works in place under ``torch.no_grad()`` and zeroes the optimizer
  state (and any pending ``.grad``) of the affected entries; SetUnitGain edits
  a per-unit gain buffer in place.
* Plans are validated before anything changes, so a rejected plan leaves model
  and optimizer untouched; errors are :class:`PlanError` (a ``ValueError``).
* Random draws use ``generator`` only: deterministic given it.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from engine.mechanisms.plans import (
    AddParameters,
    CloneUnits,
    GrowUnits,
    Plan,
    PlanError,
    PruneUnits,
    ReinitUnits,
    RemoveParameters,
    SetUnitGain,
)
from engine.mechanisms.head_plans import CloneHead, PruneHeads
from engine.mechanisms.seed_plans import BlendSeed, CullSeed, FossilizeSeed, GerminateSeed
from engine.parallel import agreed_plan
from engine.surgery_heads import apply_head_plan
from engine.surgery_units import clone, grow, module_at, prune, reinit, set_gain

__all__ = ["PlanError", "apply_plan", "apply_plans"]


def apply_plan(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    plan: Plan,
    generator: torch.Generator | None = None,
) -> None:
    """Apply one ``plan`` to ``model`` and (if given) ``optimizer``, in place.

    In a data-parallel run every rank applies rank 0's plan (:func:`engine.parallel.agreed_plan`).
    """
    plan = agreed_plan(plan)
    if isinstance(plan, GrowUnits):
        grow(model, optimizer, plan, generator)
    elif isinstance(plan, PruneUnits):
        prune(model, optimizer, plan)
    elif isinstance(plan, CloneUnits):
        clone(model, optimizer, plan, generator)
    elif isinstance(plan, SetUnitGain):
        set_gain(model, plan)
    elif isinstance(plan, ReinitUnits):
        reinit(model, optimizer, plan, generator)
    elif isinstance(plan, (AddParameters, RemoveParameters)):
        _add_or_remove(model, optimizer, plan)
    elif isinstance(plan, (GerminateSeed, BlendSeed, CullSeed, FossilizeSeed)):
        _seed_lifecycle(model, optimizer, plan)
    elif isinstance(plan, (PruneHeads, CloneHead)):
        apply_head_plan(model, optimizer, plan, generator)
    else:
        raise PlanError("plan", type(plan).__name__, "a GrowUnits, PruneUnits, CloneUnits, SetUnitGain, "
                        "ReinitUnits, AddParameters, RemoveParameters, GerminateSeed, BlendSeed, CullSeed, "
                        "FossilizeSeed, PruneHeads or CloneHead")


def apply_plans(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    plans: Iterable[Plan],
    generator: torch.Generator | None = None,
) -> None:
    """Apply ``plans`` in order; each plan's indices refer to the model after the previous ones."""
    for plan in plans:
        apply_plan(model, optimizer, plan, generator)


# ----------------------------------------------------------------- optimizer membership

def _add_or_remove(model: nn.Module, optimizer: torch.optim.Optimizer | None,
                   plan: AddParameters | RemoveParameters) -> None:
    kind = type(plan).__name__
    if optimizer is None:
        raise PlanError("optimizer", None, f"an optimizer; {kind} only changes the optimizer")
    owner = module_at(model, plan.params_owner, "params_owner")
    named = dict(owner.named_parameters())
    if not named:
        raise PlanError("params_owner", plan.params_owner, "a submodule that owns parameters")
    ids = {id(p) for p in named.values()}
    registered = {id(p) for g in optimizer.param_groups for p in g["params"]}
    if isinstance(plan, AddParameters):
        clash = [n for n, p in named.items() if id(p) in registered]
        if clash:
            raise PlanError("params_owner", plan.params_owner,
                            f"a submodule none of whose parameters is in the optimizer yet; "
                            f"already registered: {clash}")
        for p in named.values():  # fresh state even if some stale entry survived
            optimizer.state.pop(p, None)
        optimizer.add_param_group({**(plan.group or {}), "params": list(named.values())})
        return
    if not ids & registered:
        raise PlanError("params_owner", plan.params_owner,
                        "a submodule with parameters registered in the optimizer")
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if id(p) not in ids]
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    for p in named.values():
        optimizer.state.pop(p, None)


# ----------------------------------------------------------------- seed lifecycle

_SEED_FROM = {GerminateSeed: ("dormant",), BlendSeed: ("training",), CullSeed: ("training", "blending", "active"),
              FossilizeSeed: ("active",)}


def _seed_lifecycle(model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    plan: GerminateSeed | BlendSeed | CullSeed | FossilizeSeed) -> None:
    """Seed transitions; a blending seed's child may join the main optimizer (fresh state),
    a culled or fossilized one leaves it (with its state)."""
    seed = module_at(model, f"seeds.{plan.seed}", "seed")
    allowed = _SEED_FROM[type(plan)]
    if getattr(seed, "state", None) not in allowed:
        raise PlanError("seed", plan.seed, f"a seed in state {' or '.join(allowed)} for {type(plan).__name__}, "
                        f"not {getattr(seed, 'state', None)!r}")
    if isinstance(plan, GerminateSeed):
        seed.germinate()
    elif isinstance(plan, BlendSeed):
        seed.start_blending(plan.blend_steps, keep_optimizer=plan.lr is None)
        if optimizer is not None and plan.lr is not None:
            _add_or_remove(model, optimizer, AddParameters(f"seeds.{plan.seed}.child", {"lr": plan.lr}))
    else:
        registered = {id(p) for g in (optimizer.param_groups if optimizer else []) for p in g["params"]}
        if any(id(p) in registered for p in seed.child.parameters()):
            _add_or_remove(model, optimizer, RemoveParameters(f"seeds.{plan.seed}.child"))
        if isinstance(plan, CullSeed):
            seed.cull()
        else:
            seed.fossilize()

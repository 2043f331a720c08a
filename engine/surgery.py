"""Model surgery: apply mechanism plans (:mod:`engine.mechanisms.plans`) to model and optimizer.

* Grow / prune replace ``weight``/``bias`` by new ``nn.Parameter`` objects,
  update ``in_features``/``out_features``, put each new Parameter at the old
  one's position in its param group and move its optimizer state to the new
  key, slicing / zero-extending every param-shaped state tensor along the same
  dim (kept units keep their state exactly, new units get zeros, 0-d state such
  as Adam's ``step`` is kept). The optimizer is never rebuilt.
* Reinit works in place under ``torch.no_grad()`` and zeroes the optimizer
  state (and any pending ``.grad``) of the affected entries.
* Plans are validated before anything changes, so a rejected plan leaves model
  and optimizer untouched; errors are :class:`PlanError` (a ``ValueError``).
* Random draws use ``generator`` only: deterministic given it.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from engine.mechanisms.seed_plans import BlendSeed, CullSeed, FossilizeSeed, GerminateSeed
from engine.mechanisms.plans import (
    AddParameters,
    GrowUnits,
    Plan,
    PlanError,
    PruneUnits,
    ReinitUnits,
    RemoveParameters,
    sample_init,
)

__all__ = ["PlanError", "apply_plan", "apply_plans"]


def apply_plan(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    plan: Plan,
    generator: torch.Generator | None = None,
) -> None:
    """Apply one ``plan`` to ``model`` and (if given) ``optimizer``, in place."""
    if isinstance(plan, GrowUnits):
        _grow(model, optimizer, plan, generator)
    elif isinstance(plan, PruneUnits):
        _prune(model, optimizer, plan)
    elif isinstance(plan, ReinitUnits):
        _reinit(model, optimizer, plan, generator)
    elif isinstance(plan, (AddParameters, RemoveParameters)):
        _add_or_remove(model, optimizer, plan)
    elif isinstance(plan, (GerminateSeed, BlendSeed, CullSeed, FossilizeSeed)):
        _seed_lifecycle(model, optimizer, plan)
    else:
        raise PlanError("plan", type(plan).__name__, "a GrowUnits, PruneUnits, ReinitUnits, "
                        "AddParameters, RemoveParameters, GerminateSeed, BlendSeed, CullSeed or FossilizeSeed")


def apply_plans(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    plans: Iterable[Plan],
    generator: torch.Generator | None = None,
) -> None:
    """Apply ``plans`` in order; each plan's indices refer to the model after the previous ones."""
    for plan in plans:
        apply_plan(model, optimizer, plan, generator)


# ----------------------------------------------------------------- lookups

def _module(model: nn.Module, path: str, key: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules()]
        raise PlanError(key, path, f"a submodule path; valid: {names}") from None


def _linear(model: nn.Module, path: str, key: str) -> nn.Linear:
    try:
        mod: nn.Module | None = model.get_submodule(path)
    except AttributeError:
        mod = None
    if not isinstance(mod, nn.Linear):
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise PlanError(key, path, f"the path of an nn.Linear; valid: {names}")
    return mod


def _pair(model: nn.Module, optimizer: torch.optim.Optimizer | None,
          plan: GrowUnits | PruneUnits | ReinitUnits) -> tuple[nn.Linear, nn.Linear | None]:
    """Resolve ``plan.layer`` / ``plan.next_layer``, check they chain and their state maps."""
    layer = _linear(model, plan.layer, "layer")
    nxt = None if plan.next_layer is None else _linear(model, plan.next_layer, "next_layer")
    if nxt is not None and nxt.in_features != layer.out_features:
        raise PlanError("next_layer", plan.next_layer,
                        f"a Linear with in_features == {plan.layer}.out_features == "
                        f"{layer.out_features}; it has {nxt.in_features}")
    named = {f"{plan.layer}.weight": layer.weight, f"{plan.layer}.bias": layer.bias}
    if nxt is not None:
        named[f"{plan.next_layer}.weight"] = nxt.weight
    _check_state(optimizer, named)
    return layer, nxt


def _check_indices(plan: PruneUnits | ReinitUnits, n_out: int) -> Tensor:
    bad = [i for i in plan.indices if i >= n_out]
    if bad:
        raise PlanError("indices", bad, f"unit indices of {plan.layer} in 0..{n_out - 1}")
    return torch.tensor(sorted(plan.indices), dtype=torch.long)


def _check_state(optimizer: torch.optim.Optimizer | None,
                 named: dict[str, Tensor | None]) -> None:
    """Reject optimizer state that surgery cannot map (not param-shaped and not 0-d)."""
    if optimizer is None:
        return
    for name, p in named.items():
        if p is None:  # bias=False
            continue
        for key, v in optimizer.state.get(p, {}).items():
            if isinstance(v, Tensor) and v.dim() > 0 and v.shape != p.shape:
                raise PlanError(f"optimizer.state[{name}][{key!r}]", tuple(v.shape),
                                f"state tensors shaped like the parameter {tuple(p.shape)} "
                                f"or 0-d scalars")


# ----------------------------------------------------------------- grow / prune

def _remap(t: Tensor, dim: int, keep: Tensor, n_new: int) -> Tensor:
    """Entries ``keep`` of ``t`` along ``dim``, followed by ``n_new`` zero slices."""
    kept = t.index_select(dim, keep.to(t.device))
    if n_new == 0:
        return kept
    pad = list(t.shape)
    pad[dim] = n_new
    return torch.cat([kept, t.new_zeros(pad)], dim=dim)


def _reshape_param(module: nn.Linear, name: str, optimizer: torch.optim.Optimizer | None,
                   dim: int, keep: Tensor, n_new: int, fill: Tensor | None = None) -> None:
    """Replace ``module.<name>`` by a remapped new Parameter and carry its optimizer state over."""
    old: Tensor | None = getattr(module, name)
    if old is None:  # bias=False
        return
    data = _remap(old.detach(), dim, keep, n_new)
    if fill is not None:
        data.narrow(dim, len(keep), n_new).copy_(fill)
    new = nn.Parameter(data, requires_grad=old.requires_grad)
    if old.grad is not None:
        new.grad = _remap(old.grad, dim, keep, n_new)
    setattr(module, name, new)
    if optimizer is None:
        return
    for group in optimizer.param_groups:  # same list, same position
        params = group["params"]
        for i, p in enumerate(params):
            if p is old:
                params[i] = new
    state = optimizer.state.pop(old, None)
    if state is not None:
        optimizer.state[new] = {
            k: _remap(v, dim, keep, n_new) if isinstance(v, Tensor) and v.shape == old.shape
            else v
            for k, v in state.items()
        }


def _resize(layer: nn.Linear, nxt: nn.Linear | None, optimizer: torch.optim.Optimizer | None,
            keep: Tensor, n_new: int, fill: Tensor | None) -> None:
    """Keep output units ``keep`` of ``layer``, append ``n_new`` (weight rows ``fill``)."""
    _reshape_param(layer, "weight", optimizer, 0, keep, n_new, fill)  # [out, in]: rows
    _reshape_param(layer, "bias", optimizer, 0, keep, n_new)          # [out]: new biases 0
    layer.out_features = len(keep) + n_new
    if nxt is not None:
        _reshape_param(nxt, "weight", optimizer, 1, keep, n_new)      # [next_out, out]: cols 0
        nxt.in_features = layer.out_features


def _grow(model: nn.Module, optimizer: torch.optim.Optimizer | None, plan: GrowUnits,
          generator: torch.Generator | None) -> None:
    layer, nxt = _pair(model, optimizer, plan)
    n_out = layer.out_features
    rows = sample_init(plan.init, plan.count, layer, generator)
    _resize(layer, nxt, optimizer, torch.arange(n_out), plan.count, rows)  # rows: [count, in]


def _prune(model: nn.Module, optimizer: torch.optim.Optimizer | None, plan: PruneUnits) -> None:
    layer, nxt = _pair(model, optimizer, plan)
    n_out = layer.out_features
    idx = _check_indices(plan, n_out)
    if len(idx) >= n_out:
        raise PlanError("indices", plan.indices,
                        f"at most {n_out - 1} of the {n_out} units of {plan.layer}; "
                        "pruning every unit would disconnect the network")
    keep = torch.ones(n_out, dtype=torch.bool)
    keep[idx] = False
    _resize(layer, nxt, optimizer, keep.nonzero().flatten(), 0, None)


# ----------------------------------------------------------------- reinit

def _zero_entries(optimizer: torch.optim.Optimizer | None, p: Tensor, dim: int,
                  idx: Tensor) -> None:
    """Zero the ``idx`` slices along ``dim`` of p's param-shaped state and of p.grad."""
    targets = [p.grad] if p.grad is not None else []
    if optimizer is not None:
        targets += [v for v in optimizer.state.get(p, {}).values()
                    if isinstance(v, Tensor) and v.shape == p.shape]
    for t in targets:
        t.index_fill_(dim, idx.to(t.device), 0.0)


def _reinit(model: nn.Module, optimizer: torch.optim.Optimizer | None, plan: ReinitUnits,
            generator: torch.Generator | None) -> None:
    layer, nxt = _pair(model, optimizer, plan)
    idx = _check_indices(plan, layer.out_features)
    fold: Tensor | None = None
    if plan.fold_bias is not None:
        assert nxt is not None  # guaranteed by ReinitUnits.__post_init__
        if nxt.bias is None or len(plan.fold_bias) != nxt.out_features:
            have = "no bias" if nxt.bias is None else f"{nxt.out_features} outputs"
            raise PlanError("fold_bias", f"{len(plan.fold_bias)} values",
                            f"one value per output unit of {plan.next_layer} ({have})")
        fold = torch.tensor(plan.fold_bias, dtype=nxt.bias.dtype, device=nxt.bias.device)
    rows = sample_init(plan.init, len(idx), layer, generator)  # [k, in]
    with torch.no_grad():
        dev_idx = idx.to(layer.weight.device)
        layer.weight.index_copy_(0, dev_idx, rows)           # rows of [out, in]
        if layer.bias is not None:
            layer.bias.index_fill_(0, dev_idx, 0.0)          # [out]
        if nxt is not None:
            if plan.zero_outgoing:
                nxt.weight.index_fill_(1, dev_idx, 0.0)      # columns of [next_out, out]
            if fold is not None:
                nxt.bias.add_(fold)                          # [next_out]
        # state of incoming rows ([out, in], [out]) and outgoing columns ([next_out, out])
        for p, dim in ((layer.weight, 0), (layer.bias, 0), (getattr(nxt, "weight", None), 1)):
            if p is not None:
                _zero_entries(optimizer, p, dim, idx)


# ----------------------------------------------------------------- optimizer membership

def _add_or_remove(model: nn.Module, optimizer: torch.optim.Optimizer | None,
                   plan: AddParameters | RemoveParameters) -> None:
    kind = type(plan).__name__
    if optimizer is None:
        raise PlanError("optimizer", None, f"an optimizer; {kind} only changes the optimizer")
    owner = _module(model, plan.params_owner, "params_owner")
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
    seed = _module(model, f"seeds.{plan.seed}", "seed")
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

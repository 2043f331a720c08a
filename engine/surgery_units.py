"""Unit-level surgery: grow, prune, clone, re-initialise units and set per-unit gains.

The unit operations behind :func:`engine.surgery.apply_plan` (which
dispatches here; call that, not these functions):

* Grow / prune / clone replace ``weight``/``bias`` by new ``nn.Parameter``
  objects, update ``in_features``/``out_features``, put each new Parameter at
  the old one's position in its param group and move its optimizer state to
  the new key, slicing / zero-extending every param-shaped state tensor along
  the same dim (kept units keep their state exactly, new units get zeros, 0-d
  state such as Adam's ``step`` is kept). The optimizer is never rebuilt.
* Per-unit 1-D buffers named by a plan (``gain``, ``v_head``, ``v_slot``, ...)
  are replaced by new tensors of the same dtype and device holding the kept
  entries followed by the new units' values.
* Reinit and :class:`SetUnitGain` work in place under ``torch.no_grad()``.
* Every check (paths, ranges, buffer lengths and values, optimizer state) runs
  before anything changes, so a rejected plan leaves model and optimizer untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engine.mechanisms.plans import (
    BUFFER_DEFAULTS,
    CloneUnits,
    GrowUnits,
    PlanError,
    PruneUnits,
    ReinitUnits,
    SetUnitGain,
    sample_init,
)

Optim = torch.optim.Optimizer | None


# ----------------------------------------------------------------- lookups

def module_at(model: nn.Module, path: str, key: str) -> nn.Module:
    """``model.get_submodule(path)``; a missing path is a PlanError naming ``key`` and the valid paths."""
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


def _pair(model: nn.Module, optimizer: Optim,
          plan: GrowUnits | PruneUnits | ReinitUnits | CloneUnits) -> tuple[nn.Linear, nn.Linear | None]:
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


def _check_indices(indices: tuple[int, ...], n_out: int, where: str, key: str = "indices") -> Tensor:
    bad = [i for i in indices if i >= n_out]
    if bad:
        raise PlanError(key, bad, f"unit indices of {where} in 0..{n_out - 1}")
    return torch.tensor(sorted(indices), dtype=torch.long)


def _check_state(optimizer: Optim, named: dict[str, Tensor | None]) -> None:
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


def _buffer(model: nn.Module, path: str, units: int | None, key: str = "buffers") -> tuple[nn.Module, str, Tensor]:
    """Owner module, attribute name and tensor of the 1-D buffer ``path`` (``units`` entries if given)."""
    owner_path, _, attr = path.rpartition(".")
    owner = module_at(model, owner_path, key)
    buf = owner._buffers.get(attr)
    if buf is None or buf.dim() != 1 or (units is not None and buf.numel() != units):
        have = [f"{owner_path}.{n}" if owner_path else n for n, b in owner._buffers.items()
                if b is not None and b.dim() == 1]
        sizes = {n: b.numel() for n, b in owner._buffers.items() if b is not None and b.dim() == 1}
        need = "a 1-D buffer" + ("" if units is None else f" with one entry per unit ({units})")
        raise PlanError(key, path, f"{need}; 1-D buffers there: " + ", ".join(
            f"{h} ({sizes[h.rpartition('.')[2]]})" for h in have))
    return owner, attr, buf


def _buffer_updates(model: nn.Module, plan: GrowUnits | PruneUnits | CloneUnits, n_out: int,
                    n_new: int) -> list[tuple[nn.Module, str, Tensor, Tensor]]:
    """(owner, attr, old tensor, new units' values [n_new]) per buffer of ``plan``, all checked."""
    out = []
    given = getattr(plan, "buffer_values", ())
    for i, path in enumerate(plan.buffers):
        owner, attr, buf = _buffer(model, path, n_out)
        if given:
            vals = torch.tensor(given[i], dtype=torch.float64)
            if not buf.is_floating_point() and not torch.equal(vals, vals.round()):
                raise PlanError("buffer_values", given[i], f"whole numbers for the {buf.dtype} buffer {path}")
        elif n_new and not buf.is_floating_point():
            raise PlanError("buffer_values", (), f"explicit values for the {buf.dtype} buffer {path} "
                            "(integer buffers such as head / slot indices have no default)")
        else:
            vals = torch.full((n_new,), BUFFER_DEFAULTS.get(attr, 0.0), dtype=torch.float64)
        out.append((owner, attr, buf, vals.to(buf.dtype)))
    return out


# ----------------------------------------------------------------- grow / prune / clone

def _remap(t: Tensor, dim: int, keep: Tensor, n_new: int) -> Tensor:
    """Entries ``keep`` of ``t`` along ``dim``, followed by ``n_new`` zero slices."""
    kept = t.index_select(dim, keep.to(t.device))
    if n_new == 0:
        return kept
    pad = list(t.shape)
    pad[dim] = n_new
    return torch.cat([kept, t.new_zeros(pad)], dim=dim)


def _reshape_param(module: nn.Linear, name: str, optimizer: Optim,
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


def _resize(layer: nn.Linear, nxt: nn.Linear | None, optimizer: Optim, keep: Tensor, n_new: int,
            fill: Tensor | None, bias_fill: Tensor | None = None,
            buffers: list[tuple[nn.Module, str, Tensor, Tensor]] = ()) -> None:  # type: ignore[assignment]
    """Keep output units ``keep`` of ``layer``, append ``n_new`` (weight rows ``fill``, biases
    ``bias_fill`` or 0, outgoing columns 0); per-unit buffers keep ``keep`` and get the new values."""
    _reshape_param(layer, "weight", optimizer, 0, keep, n_new, fill)       # [out, in]: rows
    _reshape_param(layer, "bias", optimizer, 0, keep, n_new, bias_fill)    # [out]
    layer.out_features = len(keep) + n_new
    if nxt is not None:
        _reshape_param(nxt, "weight", optimizer, 1, keep, n_new)           # [next_out, out]: cols 0
        nxt.in_features = layer.out_features
    for owner, attr, old, vals in buffers:  # [units] -> [kept + new], same dtype and device
        setattr(owner, attr, torch.cat([old.index_select(0, keep.to(old.device)), vals.to(old.device)]))


def grow(model: nn.Module, optimizer: Optim, plan: GrowUnits, generator: torch.Generator | None) -> None:
    """Carry out a :class:`GrowUnits` plan."""
    layer, nxt = _pair(model, optimizer, plan)
    n_out = layer.out_features
    bufs = _buffer_updates(model, plan, n_out, plan.count)
    rows = sample_init(plan.init, plan.count, layer, generator)  # [count, in]
    _resize(layer, nxt, optimizer, torch.arange(n_out), plan.count, rows, buffers=bufs)


def prune(model: nn.Module, optimizer: Optim, plan: PruneUnits) -> None:
    """Carry out a :class:`PruneUnits` plan."""
    layer, nxt = _pair(model, optimizer, plan)
    n_out = layer.out_features
    idx = _check_indices(plan.indices, n_out, plan.layer)
    if len(idx) >= n_out:
        raise PlanError("indices", plan.indices,
                        f"at most {n_out - 1} of the {n_out} units of {plan.layer}; "
                        "pruning every unit would disconnect the network")
    bufs = _buffer_updates(model, plan, n_out, 0)
    keep = torch.ones(n_out, dtype=torch.bool)
    keep[idx] = False
    _resize(layer, nxt, optimizer, keep.nonzero().flatten(), 0, None, buffers=bufs)


def clone(model: nn.Module, optimizer: Optim, plan: CloneUnits, generator: torch.Generator | None) -> None:
    """Carry out a :class:`CloneUnits` plan."""
    layer, nxt = _pair(model, optimizer, plan)
    n_out = layer.out_features
    _check_indices(plan.parents, n_out, plan.layer, "parents")
    bufs = _buffer_updates(model, plan, n_out, len(plan.parents))
    w = layer.weight.detach()
    par = torch.tensor(plan.parents, dtype=torch.long, device=w.device)
    rows = w.index_select(0, par)                                  # [k, in] parents' incoming rows
    dev = generator.device if generator is not None else torch.device("cpu")
    z = torch.randn(rows.shape, generator=generator, device=dev, dtype=w.dtype).to(w.device)  # [k, in]
    rows = rows + plan.noise * rows.std(dim=1, correction=0, keepdim=True) * z
    bias = None if layer.bias is None else layer.bias.detach().index_select(0, par)  # [k]
    _resize(layer, nxt, optimizer, torch.arange(n_out), len(plan.parents), rows, bias, bufs)


# ----------------------------------------------------------------- in place: reinit, gain

def _zero_entries(optimizer: Optim, p: Tensor, dim: int, idx: Tensor) -> None:
    """Zero the ``idx`` slices along ``dim`` of p's param-shaped state and of p.grad."""
    targets = [p.grad] if p.grad is not None else []
    if optimizer is not None:
        targets += [v for v in optimizer.state.get(p, {}).values()
                    if isinstance(v, Tensor) and v.shape == p.shape]
    for t in targets:
        t.index_fill_(dim, idx.to(t.device), 0.0)


def reinit(model: nn.Module, optimizer: Optim, plan: ReinitUnits, generator: torch.Generator | None) -> None:
    """Carry out a :class:`ReinitUnits` plan."""
    layer, nxt = _pair(model, optimizer, plan)
    idx = _check_indices(plan.indices, layer.out_features, plan.layer)
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


def set_gain(model: nn.Module, plan: SetUnitGain) -> None:
    """Carry out a :class:`SetUnitGain` plan (in place; the optimizer is not involved)."""
    _, _, buf = _buffer(model, plan.buffer, None, "buffer")
    if not buf.is_floating_point():
        raise PlanError("buffer", plan.buffer, f"a floating-point buffer (it is {buf.dtype})")
    idx = _check_indices(plan.indices, buf.numel(), plan.buffer)
    order = sorted(range(len(plan.indices)), key=plan.indices.__getitem__)  # values follow sorted idx
    vals = torch.tensor([plan.values[i] for i in order], dtype=buf.dtype, device=buf.device)
    with torch.no_grad():
        buf.index_copy_(0, idx.to(buf.device), vals)

"""Plans: frozen records of a structural change a mechanism wants made.

A mechanism returns one of these; :func:`engine.surgery.apply_plan` applies it
to the model *and* the optimizer state. Layers are addressed by module path
strings as accepted by ``nn.Module.get_submodule`` (e.g. ``"net.2"``; ``""`` is
the root module). Checks that need no model (counts, index lists, init names,
fold values) run here at construction; checks against the model (paths,
ranges, shapes, optimizer state) run in :mod:`engine.surgery`.

Unit indices always refer to the layer as it is when the plan is applied, so
in a sequence of plans later indices see the effect of earlier ones.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Iterable, Union

import torch
from torch import Tensor, nn

from engine.errors import ParameterError

#: Weight distributions a plan may name for new / re-drawn incoming weights
#: (fan_in = layer.in_features, fan_out = layer.out_features):
#:   ``kaiming``        U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's nn.Linear default
#:                      (kaiming_uniform_ with a=sqrt(5));
#:   ``he_uniform``     U(-sqrt(6/fan_in), sqrt(6/fan_in)), He init for ReLU (as in CBP);
#:   ``he_normal``      N(0, 2/fan_in);
#:   ``xavier_uniform`` U(-sqrt(6/(fan_in+fan_out)), +sqrt(6/(fan_in+fan_out))).
#: New and re-initialised biases are always 0.
INITS: tuple[str, ...] = ("kaiming", "he_uniform", "he_normal", "xavier_uniform")

#: Values of new units' per-unit buffer entries when a plan gives no ``buffer_values``,
#: by the buffer's attribute name (others: 0). Only floating-point buffers have
#: defaults; an integer buffer (e.g. an attention channel's head ``v_head`` or slot
#: ``v_slot``) has no safe default, so the surgery requires explicit values for it.
BUFFER_DEFAULTS: dict[str, float] = {"gain": 1.0}


def sample_init(init: str, rows: int, layer: nn.Linear,
                generator: torch.Generator | None = None) -> Tensor:
    """Draw ``rows`` incoming-weight rows [rows, in_features] for ``layer`` from ``init``.

    Drawn on ``generator``'s device (CPU without one) in the layer's dtype, then
    moved to the layer's device, so results are reproducible given ``generator``.
    """
    _check_init(init)
    fan_in, fan_out = layer.in_features, layer.out_features
    like = layer.weight
    dev = generator.device if generator is not None else torch.device("cpu")
    if init == "he_normal":
        out = torch.randn(rows, fan_in, generator=generator, device=dev, dtype=like.dtype)
        out.mul_(math.sqrt(2.0 / fan_in))
    else:
        bound = {"kaiming": 1.0 / math.sqrt(fan_in), "he_uniform": math.sqrt(6.0 / fan_in),
                 "xavier_uniform": math.sqrt(6.0 / (fan_in + fan_out))}[init]
        out = torch.rand(rows, fan_in, generator=generator, device=dev, dtype=like.dtype)
        out.mul_(2 * bound).sub_(bound)  # U(0, 1) -> U(-bound, bound)
    return out.to(like.device)


class PlanError(ParameterError):
    """A plan that cannot be applied (a mechanism bug, not user input)."""


def _check_path(key: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str):
        allowed = "a module path string or None" if optional else "a module path string"
        raise PlanError(key, value, allowed)


def _check_pair(layer: Any, next_layer: Any) -> None:
    _check_path("layer", layer)
    _check_path("next_layer", next_layer, optional=True)
    if next_layer == layer:
        raise PlanError("next_layer", next_layer, "a different layer than 'layer'")


def _check_init(value: Any) -> None:
    if value not in INITS:
        raise PlanError("init", value, f"one of {', '.join(INITS)}")


def _indices(value: Any, key: str = "indices", distinct: bool = True) -> tuple[int, ...]:
    """Normalise ``value`` to a non-empty tuple of non-negative Python ints (distinct if asked)."""
    try:
        items = list(value)
        if any(isinstance(v, bool) for v in items):
            raise TypeError
        out = tuple(operator.index(v) for v in items)
    except TypeError:
        raise PlanError(key, value, "a sequence of integer unit indices") from None
    if not out:
        raise PlanError(key, value, "at least one unit index; emit no plan instead")
    bad = [i for i in out if i < 0]
    if bad:
        raise PlanError(key, bad, "non-negative unit indices")
    if distinct and len(set(out)) != len(out):
        dup = sorted({i for i in out if out.count(i) > 1})
        raise PlanError(key, dup, "each unit index at most once")
    return out


def _floats(key: str, value: Iterable[Any]) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise PlanError(key, value, "a sequence of numbers") from None
    if not all(math.isfinite(v) for v in out):
        raise PlanError(key, value, "finite numbers")
    return out


def _check_buffers(plan: Any, new_units: int | None) -> None:
    """Normalise ``plan.buffers`` (and ``plan.buffer_values`` for ``new_units`` new units)."""
    bufs = tuple(plan.buffers) if isinstance(plan.buffers, (tuple, list)) else (None,)
    if not all(isinstance(b, str) and b for b in bufs) or len(set(bufs)) != len(bufs):
        raise PlanError("buffers", plan.buffers, "distinct module paths of 1-D buffers, e.g. 'blocks.0.mlp.gain'")
    object.__setattr__(plan, "buffers", bufs)
    if new_units is None:
        return
    try:
        values = tuple(_floats("buffer_values", v) for v in plan.buffer_values)
    except TypeError:
        raise PlanError("buffer_values", plan.buffer_values, "a sequence of value sequences") from None
    if values and len(values) != len(bufs):
        raise PlanError("buffer_values", f"{len(values)} sequences",
                        f"() for the defaults or one sequence per buffer ({len(bufs)})")
    bad = [len(v) for v in values if len(v) != new_units]
    if bad:
        raise PlanError("buffer_values", f"sequences of {bad} values", f"{new_units} values each (one per new unit)")
    object.__setattr__(plan, "buffer_values", values)


@dataclass(frozen=True)
class GrowUnits:
    """Add ``count`` output units to nn.Linear ``layer`` and matching inputs to ``next_layer``.

    ``layer`` gets ``count`` new weight rows drawn from ``init`` and zero biases;
    ``next_layer`` (the Linear that consumes ``layer``'s output, or None) gets
    ``count`` new input columns that are all **zero**. Zero outgoing columns keep
    the network function exactly unchanged at growth time (the new units'
    activations are multiplied by 0), so growth never causes a loss spike. The
    new units still learn: the gradient of an outgoing weight is
    (upstream gradient x new unit's activation), which is non-zero, and once the
    outgoing weights are non-zero the random incoming rows receive gradient too
    (random incoming rows also break the symmetry between new units). Note the
    incoming rows get exactly zero gradient on the first step after growth.

    ``buffers`` are module paths of 1-D per-unit buffers of ``layer``'s units
    (e.g. ``"blocks.0.mlp.gain"``), each extended by ``count`` entries:
    ``buffer_values`` holds one sequence of ``count`` values per buffer, or is
    empty for the defaults (see :data:`BUFFER_DEFAULTS`).
    """

    layer: str
    next_layer: str | None
    count: int
    init: str = "kaiming"
    buffers: tuple[str, ...] = ()
    buffer_values: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self) -> None:
        _check_pair(self.layer, self.next_layer)
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise PlanError("count", self.count, "an integer >= 1")
        _check_init(self.init)
        _check_buffers(self, self.count)


@dataclass(frozen=True)
class PruneUnits:
    """Remove output units ``indices`` of ``layer`` and the matching input columns of ``next_layer``.

    ``next_layer``'s bias is left unchanged (fold a pruned unit's mean
    contribution first with :class:`ReinitUnits` ``fold_bias`` if wanted).
    The 1-D per-unit ``buffers`` (module paths) keep the same entries as the weights.
    """

    layer: str
    next_layer: str | None
    indices: tuple[int, ...]
    buffers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_pair(self.layer, self.next_layer)
        object.__setattr__(self, "indices", _indices(self.indices))
        _check_buffers(self, None)


@dataclass(frozen=True)
class CloneUnits:
    """Append one mutated copy of each unit in ``parents`` to ``layer`` (apoptosis regrowth).

    Child ``c`` of parent ``p`` gets incoming row ``W[p] + noise * std(W[p]) * z``
    (``z`` ~ N(0, 1) per weight, drawn from the surgery's generator; std over the
    row's ``in_features`` entries), bias ``b[p]``, a **zero** outgoing column in
    ``next_layer`` (the network function is unchanged at birth) and zero
    optimizer state. A parent may appear several times (several children).
    ``buffers`` / ``buffer_values`` extend per-unit buffers as in
    :class:`GrowUnits` (one value per child).
    """

    layer: str
    next_layer: str | None
    parents: tuple[int, ...]
    noise: float
    buffers: tuple[str, ...] = ()
    buffer_values: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self) -> None:
        _check_pair(self.layer, self.next_layer)
        object.__setattr__(self, "parents", _indices(self.parents, "parents", distinct=False))
        if isinstance(self.noise, bool) or not isinstance(self.noise, (int, float)) \
                or not 0 <= self.noise < math.inf:
            raise PlanError("noise", self.noise, "a finite number >= 0")
        _check_buffers(self, len(self.parents))


@dataclass(frozen=True)
class SetUnitGain:
    """Set entries ``indices`` of the 1-D float per-unit buffer ``buffer`` to ``values`` (in place).

    Used to fade units out gradually; weights and optimizer state are untouched.
    """

    buffer: str
    indices: tuple[int, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        _check_path("buffer", self.buffer)
        object.__setattr__(self, "indices", _indices(self.indices))
        object.__setattr__(self, "values", _floats("values", self.values))
        if len(self.values) != len(self.indices):
            raise PlanError("values", f"{len(self.values)} values", f"one per index ({len(self.indices)})")


@dataclass(frozen=True)
class ReinitUnits:
    """Re-initialise output units ``indices`` of ``layer`` in place (continual backprop, ReDo).

    Incoming weight rows are re-drawn from ``init``, their biases set to 0,
    their outgoing columns in ``next_layer`` zeroed if ``zero_outgoing``, and
    the optimizer state of all those entries reset to 0. ``fold_bias`` (one
    value per ``next_layer`` output unit, shape [next_out]) is added to
    ``next_layer``'s bias; continual backprop folds the removed units' mean
    contribution there so the mean output is preserved. Outgoing-column state
    is reset even when ``zero_outgoing`` is False, and pending ``.grad``
    entries of the affected weights are zeroed too. Optimizers with a single
    scalar ``step`` (torch Adam/AdamW) keep it, so the reset moments get the
    late-training bias correction (unlike per-element step counts in CBP's AdamGnT).
    """

    layer: str
    next_layer: str | None
    indices: tuple[int, ...]
    zero_outgoing: bool = True
    fold_bias: tuple[float, ...] | None = None
    init: str = "kaiming"

    def __post_init__(self) -> None:
        _check_pair(self.layer, self.next_layer)
        object.__setattr__(self, "indices", _indices(self.indices))
        if not isinstance(self.zero_outgoing, bool):
            raise PlanError("zero_outgoing", self.zero_outgoing, "True or False")
        if self.fold_bias is not None:
            if self.next_layer is None:
                raise PlanError("fold_bias", "<values>", "None when next_layer is None")
            object.__setattr__(self, "fold_bias", _floats("fold_bias", self.fold_bias))
        _check_init(self.init)


@dataclass(frozen=True)
class AddParameters:
    """Register every parameter of submodule ``params_owner`` with the optimizer.

    They form one new param group with fresh (empty) state; ``group`` holds
    hyper-parameter overrides for it (e.g. ``{"lr": 1e-4}``); missing keys take
    the optimizer's defaults. Used when a new sub-network (e.g. a seed's child
    net) starts training with the main optimizer.
    """

    params_owner: str
    group: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_path("params_owner", self.params_owner)
        if self.group is not None:
            if not isinstance(self.group, dict):
                raise PlanError("group", self.group, "a dict of hyper-parameters or None")
            if "params" in self.group:
                raise PlanError("group", sorted(self.group), "hyper-parameters only, no 'params' key")


@dataclass(frozen=True)
class RemoveParameters:
    """Drop every parameter of submodule ``params_owner`` (and its state) from the optimizer.

    Param groups left empty are removed.
    """

    params_owner: str

    def __post_init__(self) -> None:
        _check_path("params_owner", self.params_owner)


Plan = Union[GrowUnits, PruneUnits, CloneUnits, SetUnitGain, ReinitUnits, AddParameters, RemoveParameters]
"""Any structural change :func:`engine.surgery.apply_plan` can carry out."""

__all__ = [
    "BUFFER_DEFAULTS",
    "INITS",
    "AddParameters",
    "CloneUnits",
    "GrowUnits",
    "Plan",
    "PlanError",
    "PruneUnits",
    "ReinitUnits",
    "RemoveParameters",
    "SetUnitGain",
    "sample_init",
]

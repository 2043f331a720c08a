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


def _check_init(value: Any) -> None:
    if value not in INITS:
        raise PlanError("init", value, f"one of {', '.join(INITS)}")


def _indices(value: Any) -> tuple[int, ...]:
    """Normalise ``value`` to a tuple of distinct non-negative Python ints (non-empty)."""
    try:
        items = list(value)
        if any(isinstance(v, bool) for v in items):
            raise TypeError
        out = tuple(operator.index(v) for v in items)
    except TypeError:
        raise PlanError("indices", value, "a sequence of integer unit indices") from None
    if not out:
        raise PlanError("indices", value, "at least one unit index; emit no plan instead")
    bad = [i for i in out if i < 0]
    if bad:
        raise PlanError("indices", bad, "non-negative unit indices")
    if len(set(out)) != len(out):
        dup = sorted({i for i in out if out.count(i) > 1})
        raise PlanError("indices", dup, "each unit index at most once")
    return out


def _floats(key: str, value: Iterable[Any]) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise PlanError(key, value, "a sequence of numbers") from None
    if not all(math.isfinite(v) for v in out):
        raise PlanError(key, value, "finite numbers")
    return out


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
    """

    layer: str
    next_layer: str | None
    count: int
    init: str = "kaiming"

    def __post_init__(self) -> None:
        _check_path("layer", self.layer)
        _check_path("next_layer", self.next_layer, optional=True)
        if self.next_layer == self.layer:
            raise PlanError("next_layer", self.next_layer, "a different layer than 'layer'")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise PlanError("count", self.count, "an integer >= 1")
        _check_init(self.init)


@dataclass(frozen=True)
class PruneUnits:
    """Remove output units ``indices`` of ``layer`` and the matching input columns of ``next_layer``.

    ``next_layer``'s bias is left unchanged (fold a pruned unit's mean
    contribution first with :class:`ReinitUnits` ``fold_bias`` if wanted).
    """

    layer: str
    next_layer: str | None
    indices: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_path("layer", self.layer)
        _check_path("next_layer", self.next_layer, optional=True)
        if self.next_layer == self.layer:
            raise PlanError("next_layer", self.next_layer, "a different layer than 'layer'")
        object.__setattr__(self, "indices", _indices(self.indices))


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
        _check_path("layer", self.layer)
        _check_path("next_layer", self.next_layer, optional=True)
        if self.next_layer == self.layer:
            raise PlanError("next_layer", self.next_layer, "a different layer than 'layer'")
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


Plan = Union[GrowUnits, PruneUnits, ReinitUnits, AddParameters, RemoveParameters]
"""Any structural change :func:`engine.surgery.apply_plan` can carry out."""

__all__ = [
    "INITS",
    "AddParameters",
    "GrowUnits",
    "Plan",
    "PlanError",
    "PruneUnits",
    "ReinitUnits",
    "RemoveParameters",
    "sample_init",
]

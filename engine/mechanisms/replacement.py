"""Registry of unit-replacement mechanisms (continual backprop, ReDo).

A replacement mechanism watches a network's hidden layers and returns
:class:`~engine.mechanisms.plans.ReinitUnits` plans; the experiment applies
them with :func:`engine.surgery.apply_plan`. Every mechanism has the same
small interface (:class:`ReplacementMechanism`), so a family picks one by name.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np
from torch import Tensor

from engine.errors import ConfigError
from engine.mechanisms.plans import ReinitUnits


class ReplacementMechanism(Protocol):
    """What a family calls on a unit-replacement mechanism.

    ``observe`` runs after every optimizer step with that step's (pre-update)
    hidden activations, each [batch, units]; ``plans`` returns the units to
    re-initialise now (``probe`` lazily computes hidden activations of a
    held-out batch for mechanisms that score on data other than the step's).
    After the experiment applied the plans it calls ``replaced(plan, step)``.
    """

    replaced_total: list[int]  # cumulative re-initialised units per hidden layer

    def observe(self, step: int, hidden: list[Tensor]) -> None: ...

    def plans(self, step: int, probe: Callable[[], list[Tensor]]) -> list[ReinitUnits]: ...

    def unit_signals(self) -> dict[str, list[np.ndarray]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


_MECHANISMS: dict[str, Callable[..., ReplacementMechanism]] = {}


def register_mechanism(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Class decorator registering a replacement mechanism under ``name``."""

    def deco(cls: Callable[..., Any]) -> Callable[..., Any]:
        if name in _MECHANISMS and _MECHANISMS[name] is not cls:
            raise RuntimeError(f"mechanism {name!r} registered twice")
        _MECHANISMS[name] = cls
        return cls

    return deco


def _load() -> None:
    # The built-in mechanisms register on import.
    import engine.mechanisms.cbp  # noqa: F401
    import engine.mechanisms.redo  # noqa: F401


def mechanism_names() -> list[str]:
    """Sorted names of the registered replacement mechanisms."""
    _load()
    return sorted(_MECHANISMS)


def get_mechanism(name: str) -> Callable[..., ReplacementMechanism]:
    """The mechanism class registered as ``name``; unknown names list the valid ones."""
    _load()
    try:
        return _MECHANISMS[name]
    except KeyError:
        raise ConfigError("mechanism", name, "allowed: " + ", ".join(sorted(_MECHANISMS))) from None

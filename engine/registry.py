"""Registry of experiment families.

Each family lives in its own module under ``engine.experiments`` and registers
itself on import, so adding a family (``ndl``, ``cbp``, ...) is a new module,
not an edit of the CLI or the config code.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel

from engine.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from engine.experiments.base import Experiment


@dataclass(frozen=True)
class ExperimentSpec:
    """What the engine needs to know about one experiment family."""

    name: str
    config_cls: type[BaseModel]
    factory: Callable[..., "Experiment"]
    summary: str
    train_defaults: dict[str, Any] = field(default_factory=dict)


_EXPERIMENTS: dict[str, ExperimentSpec] = {}
_LOADED = False


def register_experiment(
    name: str, config_cls: type[BaseModel], summary: str, train_defaults: dict[str, Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Class/function decorator registering an experiment factory under ``name``.

    ``train_defaults`` overrides defaults of the shared ``train`` section for
    this family (e.g. SGD with lr 0.1 for the plasticity streams); values the
    user gives still win.
    """

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _EXPERIMENTS and _EXPERIMENTS[name].factory is not factory:
            raise RuntimeError(f"experiment {name!r} registered twice")
        _EXPERIMENTS[name] = ExperimentSpec(name, config_cls, factory, summary, dict(train_defaults or {}))
        return factory

    return deco


def _load_all() -> None:
    """Import every module of ``engine.experiments`` once so they register."""
    global _LOADED
    if _LOADED:
        return
    import engine.experiments as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.name.startswith("_") and mod.name != "base":
            importlib.import_module(f"{pkg.__name__}.{mod.name}")
    _LOADED = True


def experiment_names() -> list[str]:
    """Sorted names of all registered experiment families."""
    _load_all()
    return sorted(_EXPERIMENTS)


def get_experiment(name: str) -> ExperimentSpec:
    """Look up a family; an unknown name is a :class:`ConfigError` listing valid ones."""
    _load_all()
    try:
        return _EXPERIMENTS[name]
    except KeyError:
        raise ConfigError(
            "experiment", name, "allowed: " + ", ".join(sorted(_EXPERIMENTS))
        ) from None

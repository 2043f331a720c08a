"""Click options generated from the typed config models.

Every leaf field of :class:`RunConfig` and of each registered family's config
becomes ``--<field>``, with its type, choices and documented default taken
from the model. Options default to ``None`` so only flags the user gave
become overrides (sweep YAML values override those in turn).
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Callable

import click

from engine.config import field_info, flat_fields
from engine.registry import experiment_names, get_experiment


def _click_type(annotation: Any) -> Any:
    if typing.get_origin(annotation) is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)])
    return {int: int, float: float, Path: click.Path(path_type=Path)}.get(annotation, str)


def _option(key: str, experiment: str) -> Callable[[Any], Any]:
    info = field_info(experiment, key)
    owners = [n for n in experiment_names() if key in flat_fields(n)]
    defaults = {n: field_info(n, key).get_default(call_default_factory=True) for n in owners}
    if len(set(map(str, defaults.values()))) > 1:  # a family key whose default differs by family
        helptext = f"{info.description or key} [default: " + ", ".join(f"{n}: {v}" for n, v in defaults.items())
    else:
        helptext = f"{info.description or key} [default: {defaults[experiment]}"
    # Families may override shared train defaults (e.g. SGD for the plasticity streams).
    others = [f"{n}: {get_experiment(n).train_defaults[key]}" for n in experiment_names()
              if key in get_experiment(n).train_defaults]
    helptext += f"; {', '.join(others)}]" if others else "]"
    if len(owners) < len(experiment_names()):  # shared keys (train, telemetry) say nothing
        helptext += f" ({', '.join(owners)} only)"
    if info.annotation is bool:
        return click.option(f"--{key}/--no_{key}", key, default=None, help=helptext)
    ctype = _click_type(info.annotation)
    metavar = None if isinstance(ctype, click.Choice) else key.upper()
    return click.option(f"--{key}", key, type=ctype, default=None, help=helptext, metavar=metavar)


def config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate ``func`` with one option per flat config key of every family."""
    seen: dict[str, str] = {}
    for name in experiment_names():
        for key in flat_fields(name):
            seen.setdefault(key, name)
    for key in sorted(seen, reverse=True):  # click lists options in decoration order
        func = _option(key, seen[key])(func)
    return func


def given(overrides: dict[str, Any]) -> dict[str, Any]:
    """Only the options the user actually passed."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in overrides.items() if v is not None}

"""The ``search:`` block of a sweep YAML: an Optuna search instead of a fixed grid.

A sweep file with a ``search:`` block samples its trials instead of expanding
a Cartesian product; every other top-level key is a fixed config value::

    search:
      method: bayes                  # grid | random | bayes (Optuna TPE)
      n_trials: 12                   # required for random and bayes; grid: the grid size
      parameters:
        lr: {type: float, low: 1.0e-4, high: 0.3, log: true}
        hidden_dim: {type: int, low: 4, high: 32, step: 4}
        mechanism: {type: categorical, choices: [none, cbp, redo]}
      objective: {metric: val_loss, direction: minimize}
      sampler: {name: tpe, seed: 0, n_startup_trials: 4}   # or just "tpe"; name defaults from method
      pruner: {name: median, n_startup_trials: 3, n_warmup_steps: 2}   # or "none"
    hidden_sizes: ["16,16"]          # fixed value (a one-element list is one value)

The shape is checked with pydantic, the rest (ranges, the objective metric,
every sampled corner as a real config) by :func:`parse_search`, which raises
:class:`~engine.errors.ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.config import build_config
from engine.errors import ConfigError
from engine.sweep.summary import METRIC_COLUMNS
from engine.telemetry.catalog import CATALOG, PREFIX

SEARCH_KEY = "search"
#: The sampler each method uses (``sampler.name`` may repeat it, never change it).
METHOD_SAMPLER = {"grid": "grid", "random": "random", "bayes": "tpe"}
#: Final metrics every run writes to ``metrics.json`` whatever its family (Trainer.final_metrics).
RUN_METRICS = ("epochs", "steps", "germinations", "parameters", "rollbacks", "nonfinite_steps", "wall_seconds")
#: Per-epoch metrics some family writes to ``history.jsonl`` that have no run-level catalog gauge.
FAMILY_EPOCH_METRICS = ("base_class_error", "newest_class_error", "mean_forgetting", "stage",
                        "stream_classes", "stream_cycle", "val_loss_a", "online_accuracy")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamSpec(_Strict):
    """One searched config key: a numeric range (``int``/``float``) or ``categorical`` choices."""

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None


class ObjectiveSpec(_Strict):
    """The final metric (``metrics.json``) a trial is judged by; also reported per epoch."""

    metric: str
    direction: Literal["minimize", "maximize"] = "minimize"


class SamplerSpec(_Strict):
    """Optuna sampler options; ``name`` defaults to the method's sampler."""

    name: Literal["tpe", "random", "grid"] | None = None
    seed: int | None = None
    n_startup_trials: int | None = Field(default=None, ge=0)  # tpe: random trials before modelling

    @field_validator("name", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


class PrunerSpec(_Strict):
    """Optuna pruner options: ``median`` (MedianPruner) or ``none``."""

    name: Literal["median", "none"] = "median"
    n_startup_trials: int = Field(default=2, ge=0)  # finished trials before any pruning
    n_warmup_steps: int = Field(default=1, ge=0)  # epochs of a trial before it may be pruned
    interval_steps: int = Field(default=1, ge=1)


class SearchSpec(_Strict):
    """The validated ``search:`` block."""

    method: Literal["grid", "random", "bayes"]
    n_trials: int | None = Field(default=None, ge=1)
    parameters: dict[str, ParamSpec] = Field(min_length=1)
    objective: ObjectiveSpec
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()

    @field_validator("sampler", "pruner", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        # ``sampler: tpe`` / ``pruner: none`` mean ``{name: ...}``.
        return {"name": v} if isinstance(v, str) or v is None else v

    @property
    def sampler_name(self) -> str:
        """The Optuna sampler this search uses."""
        return self.sampler.name or METHOD_SAMPLER[self.method]

    def grid_space(self) -> dict[str, list[Any]]:
        """Every parameter's values for the grid sampler (ranges need ``step`` or are ints)."""
        out: dict[str, list[Any]] = {}
        for name, p in self.parameters.items():
            if p.type == "categorical":
                out[name] = list(p.choices or [])
            elif p.type == "int":
                out[name] = list(range(int(p.low or 0), int(p.high or 0) + 1, int(p.step or 1)))
            else:
                n = int(math.floor(((p.high or 0) - (p.low or 0)) / (p.step or 1) + 1e-9))
                out[name] = [round((p.low or 0) + i * (p.step or 1), 12) for i in range(n + 1)]
        return out

    def total_trials(self) -> int:
        """``n_trials``; for a grid at most (and by default) the number of grid points."""
        if self.method != "grid":
            return int(self.n_trials or 0)
        size = math.prod(len(v) for v in self.grid_space().values())
        return min(self.n_trials or size, size)


_MODELS: dict[str, type[BaseModel]] = {"objective": ObjectiveSpec, "sampler": SamplerSpec,
                                       "pruner": PrunerSpec}


def _pydantic_error(exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join([SEARCH_KEY, *loc])
    if err["type"] == "extra_forbidden":
        model = (ParamSpec if loc[0] == "parameters" else _MODELS.get(loc[0], SearchSpec)) if len(loc) > 1 \
            else SearchSpec
        return ConfigError(key, err.get("input"), "unknown key; allowed: " + ", ".join(model.model_fields))
    if err["type"] == "missing":
        return ConfigError(key, None, "required")
    msg = err["msg"]
    return ConfigError(key, err.get("input"), msg[0].lower() + msg[1:])


def objective_metrics() -> frozenset[str]:
    """Every metric name some family writes to ``metrics.json`` (final) or ``history.jsonl``.

    Built from the catalog's run-level gauges and counters (without the prefix;
    ``*_ratio`` / ``*_total`` also without the suffix, as the result files name
    them), the trainer's final metrics and the family metrics not in the catalog.
    """
    names = set(METRIC_COLUMNS) | set(RUN_METRICS) | set(FAMILY_EPOCH_METRICS)
    for spec in CATALOG:
        if spec.labels != ("run_id",) or spec.kind == "histogram":
            continue
        short = spec.name.removeprefix(PREFIX + "_")
        if spec.kind == "counter":  # the result files hold counts without the suffix (germinations)
            names.add(short.removesuffix("_total"))
            continue
        names.update({short, short.removesuffix("_ratio")})  # val_accuracy and loss_baseline_ratio
    return frozenset(names)


def _check_param(name: str, p: ParamSpec, method: str) -> None:
    key = f"{SEARCH_KEY}.parameters.{name}"
    if p.type == "categorical":
        for field in ("low", "high", "step"):
            if getattr(p, field) is not None:
                raise ConfigError(f"{key}.{field}", getattr(p, field), "not allowed for type categorical; "
                                  "give choices")
        if not p.choices:
            raise ConfigError(f"{key}.choices", p.choices, "a non-empty list of values")
        for c in p.choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise ConfigError(f"{key}.choices", c, "allowed: null, booleans, numbers and strings")
        if len({repr(c) for c in p.choices}) != len(p.choices):
            raise ConfigError(f"{key}.choices", p.choices, "each choice once")
        return
    if p.choices is not None:
        raise ConfigError(f"{key}.choices", p.choices, f"not allowed for type {p.type}; give low and high")
    for field in ("low", "high"):
        value = getattr(p, field)
        if value is None:
            raise ConfigError(f"{key}.{field}", None, f"required for type {p.type}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}.{field}", value, "a finite number")
        if p.type == "int" and not float(value).is_integer():
            raise ConfigError(f"{key}.{field}", value, "an integer for type int")
    assert p.low is not None and p.high is not None
    if p.low > p.high:
        raise ConfigError(f"{key}.low", p.low, f"must be <= high ({p.high})")
    if p.log and p.low <= 0:
        raise ConfigError(f"{key}.low", p.low, "must be > 0 with log: true")
    if p.step is not None:
        if p.step <= 0 or (p.type == "int" and not float(p.step).is_integer()):
            raise ConfigError(f"{key}.step", p.step, f"a positive {'integer' if p.type == 'int' else 'number'}")
        if p.log and p.step != 1:
            raise ConfigError(f"{key}.step", p.step, "not allowed with log: true")
    if method == "grid" and p.type == "float" and p.step is None:
        raise ConfigError(f"{key}.step", None, "required for a float with method grid "
                          "(or use type categorical)")


def _corners(spec: SearchSpec) -> list[dict[str, Any]]:
    """Points that cover every bound and choice of every parameter (others at their first value)."""
    values: dict[str, list[Any]] = {}
    for name, p in spec.parameters.items():
        if p.type == "categorical":
            values[name] = list(p.choices or [])
        else:
            cast = int if p.type == "int" else float
            values[name] = [cast(p.low), cast(p.high)]
    first = {k: v[0] for k, v in values.items()}
    points = [first]
    for name, vs in values.items():
        points += [{**first, name: v} for v in vs[1:]]
    # An experiment choice changes which keys exist: try each one with every other corner.
    if len(values.get("experiment", [])) > 1:
        points = [{**p, "experiment": e} for p, e in itertools.product(points, values["experiment"])]
    return points


def parse_search(block: Any, fixed: dict[str, Any]) -> SearchSpec:
    """Validate a ``search:`` block against the sweep's fixed flat config ``fixed``.

    Every bound and choice is built into a real config (:func:`build_config`),
    so an unknown key or a value the config refuses fails here, before any
    trial starts. Raises :class:`ConfigError` for the first problem found.
    """
    if not isinstance(block, dict):
        raise ConfigError(SEARCH_KEY, block, "a mapping with keys " + ", ".join(SearchSpec.model_fields))
    params = block.get("parameters")
    if isinstance(params, dict):  # name an unknown type before pydantic's generic union message
        for name, p in params.items():
            if isinstance(p, dict) and p.get("type") not in ("int", "float", "categorical"):
                raise ConfigError(f"{SEARCH_KEY}.parameters.{name}.type", p.get("type"),
                                  "allowed: int, float, categorical")
    try:
        spec = SearchSpec.model_validate(block)
    except ValidationError as exc:
        raise _pydantic_error(exc) from None
    if spec.method != "grid" and spec.n_trials is None:
        raise ConfigError(f"{SEARCH_KEY}.n_trials", None, f"required for method {spec.method}: an integer >= 1")
    if spec.sampler.name is not None and spec.sampler.name != METHOD_SAMPLER[spec.method]:
        raise ConfigError(f"{SEARCH_KEY}.sampler.name", spec.sampler.name,
                          f"method {spec.method} uses sampler {METHOD_SAMPLER[spec.method]}")
    if spec.sampler.n_startup_trials is not None and spec.sampler_name != "tpe":
        raise ConfigError(f"{SEARCH_KEY}.sampler.n_startup_trials", spec.sampler.n_startup_trials,
                          "only for the tpe sampler (method bayes)")
    for name, p in spec.parameters.items():
        if name in fixed:
            raise ConfigError(name, fixed[name], "set both at the top level and under search.parameters; "
                              "give it in one place")
        _check_param(name, p, spec.method)
    metric = spec.objective.metric
    known = objective_metrics()
    if metric not in known:
        raise ConfigError(f"{SEARCH_KEY}.objective.metric", metric,
                          "not a metric any family writes; allowed: " + ", ".join(sorted(known)))
    for point in _corners(spec):
        build_config({**fixed, **point})
    return spec

"""Sweep YAML -> validated, de-duplicated trials (pure: reads files, writes nothing).

One file is one sweep. Its top level is a flat mapping of config keys (the
same names as the CLI flags, see :func:`engine.config.flat_fields`) to values,
plus an optional ``sweep:`` block of sweep-level settings::

    sweep:                  # optional
      name: lr_vs_width     # default: the file name without extension
      parallel: 2           # default: the CLI's --parallel
    lr: [0.01, 0.003]       # a YAML list
    hidden_dim: "16,32"     # a comma string; items parsed as YAML scalars
    problem_type: spirals   # a single value

The grid is the Cartesian product of all keys, in file order. CLI flags the
user set are defaults; the YAML overrides them. A file with a ``search:``
block is a search sweep instead (:mod:`engine.sweep.search`).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.config import RunConfig, build_config, config_hash
from engine.errors import ConfigError

SWEEP_KEY = "sweep"
_SETTINGS = ("name", "parallel")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Trial:
    """One resolved grid point: ``index`` is 1-based, ``params`` its YAML values.

    ``config_hash`` (:func:`engine.config.config_hash`) names the grid point;
    each launch of the trial gets its own run_id (:mod:`engine.identity`),
    made by the sweep runner when it creates the trial's directory.
    """

    index: int
    config_hash: str
    flat: dict[str, Any]
    config: RunConfig
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepSettings:
    """The optional ``sweep:`` block; ``None`` means "not set in the file"."""

    name: str | None = None
    parallel: int | None = None


def load_sweep_files(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Read a sweep YAML file, or every ``*.yaml``/``*.yml`` in a directory (sorted).

    Returns ``(sweep_name, mapping)`` per file; the name is ``sweep.name`` or the
    file stem. Raises :class:`ConfigError` (key ``sweep_config``) for a missing
    path, an empty directory, a YAML syntax error or a non-mapping document.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))
        if not files:
            raise ConfigError("sweep_config", str(path), "directory has no *.yaml or *.yml files")
    elif path.is_file():
        files = [path]
    else:
        raise ConfigError(
            "sweep_config", str(path), "no such file or directory; give a sweep YAML file or a directory of them"
        )
    out: list[tuple[str, dict[str, Any]]] = []
    for file in files:
        mapping = _read_mapping(file)
        name = sweep_settings(mapping).name or re.sub(r"[^A-Za-z0-9._-]", "_", file.stem)
        if name in (n for n, _ in out):
            raise ConfigError("sweep.name", name, f"must be unique across the sweep files in {path}")
        out.append((name, mapping))
    return out


def _read_mapping(file: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError("sweep_config", str(file), f"YAML syntax error{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("sweep_config", str(file), f"unreadable: {exc}") from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else type(data).__name__
        raise ConfigError(
            "sweep_config", str(file), f"allowed: a mapping of flat config keys to values; got {got}"
        )
    return data


def sweep_settings(mapping: dict[str, Any]) -> SweepSettings:
    """Validate and return the optional ``sweep:`` block of a sweep mapping."""
    block = mapping.get(SWEEP_KEY)
    if block is None:
        return SweepSettings()
    if not isinstance(block, dict):
        raise ConfigError(SWEEP_KEY, block, "allowed: a mapping with keys " + ", ".join(_SETTINGS))
    for key in block:
        if key not in _SETTINGS:
            raise ConfigError(f"sweep.{key}", block[key], "unknown key; allowed: " + ", ".join(_SETTINGS))
    name, parallel = block.get("name"), block.get("parallel")
    if name is not None and not (isinstance(name, str) and _NAME_RE.match(name)):
        raise ConfigError("sweep.name", name, "allowed: letters, digits, '.', '_', '-'")
    if parallel is not None and (isinstance(parallel, bool) or not isinstance(parallel, int)
                                 or not 1 <= parallel <= 64):
        raise ConfigError("sweep.parallel", parallel, "allowed: an integer from 1 to 64")
    return SweepSettings(name=name, parallel=parallel)


def grid_values(key: str, value: Any) -> list[Any]:
    """The values one key takes: a list as is, a comma string split, else ``[value]``."""
    if isinstance(value, list):
        values = value
    elif isinstance(value, str) and "," in value:
        values = [_scalar(key, value, item.strip()) for item in value.split(",")]
    else:
        values = [] if value is None or value == "" else [value]
    if not values:
        raise ConfigError(key, value, "empty grid: give at least one value")
    return values


def _scalar(key: str, whole: str, item: str) -> Any:
    if not item:
        raise ConfigError(key, whole, "empty item in comma-separated list")
    try:
        parsed = yaml.safe_load(item)
    except yaml.YAMLError:
        return item
    # "a: b" or "[x" are not scalars; the user meant the literal text.
    return item if isinstance(parsed, (dict, list)) else parsed


def expand_grid(mapping: dict[str, Any]) -> list[dict[str, Any]]:
    """Cartesian product of all keys (file order; values in listed order).

    The ``sweep:`` block is skipped; a mapping with no keys yields ``[{}]``.
    """
    keys = [str(k) for k in mapping if k != SWEEP_KEY]
    columns = [grid_values(k, mapping[k]) for k in mapping if k != SWEEP_KEY]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*columns)]


def resolve_trials(base: dict[str, Any], mapping: dict[str, Any]) -> list[Trial]:
    """Validate every grid point of ``mapping`` over the defaults ``base``.

    ``base`` holds the flat keys the user set explicitly on the CLI; YAML values
    override them. Each point goes through :func:`build_config` (so unknown or
    invalid keys raise :class:`ConfigError`); points whose resolved configs are
    equal (ignoring result-neutral fields) are kept once, at their first index.
    ``config_hash`` is :func:`engine.config.config_hash`, stable across
    processes and machines.
    """
    trials: list[Trial] = []
    seen: set[str] = set()
    for combo in expand_grid(mapping):
        flat = {**base, **combo}
        cfg = build_config(flat)
        digest = config_hash(cfg, length=64)  # the full hash, for de-duplication
        if digest in seen:
            continue
        seen.add(digest)
        trials.append(Trial(len(trials) + 1, digest[:10], flat, cfg, combo))
    return trials

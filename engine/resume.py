"""Which options ``--resume`` may change, and the resumed run's config.

A resumed run continues the experiment its saved ``config.yaml`` defines, so
only *runtime* options may differ: how the run is observed and where it runs,
never what it computes. They are

* every telemetry option (``metrics_port``, ``metrics_host``, ``auto_port``,
  ``metrics_linger``, ``metrics_hold``, ``tensorboard``, ``histogram_every``,
  ``mlflow``, ``console``, ``strict_sinks``, ``neuron_topk``, and any added to
  the telemetry section later): sinks only read events;
* :data:`RESUME_TRAIN_KEYS`: ``device`` (a run moved between CPU and GPU
  continues the same experiment, though not bit for bit), ``threads``,
  ``checkpoint_every`` and ``nproc`` (data-parallel ranks: every rank loads the
  same checkpoint; float summation order changes); the config hash ignores them.

Everything else (``lr``, ``seed``, ``experiment``, ``output_dir``, family keys,
the divergence policy ``on_diverge`` / ``max_rollbacks`` / ``rollback_lr_factor``
and the ``fault_*`` drills, which change what happens at a step) is part of the
experiment and cannot change; giving it with its saved value is accepted,
since that changes nothing.
"""

from __future__ import annotations

from typing import Any

from engine.config import RunConfig, flat_fields, validate_nested
from engine.errors import ConfigError

#: Train keys that change how, not what, a resumed run computes.
RESUME_TRAIN_KEYS = ("device", "threads", "checkpoint_every", "nproc")


def resume_keys(experiment: str) -> tuple[str, ...]:
    """Flat keys ``--resume`` accepts for ``experiment`` (sorted)."""
    return tuple(sorted(key for key, path in flat_fields(experiment).items()
                        if path[0] == "telemetry" or (path[0] == "train" and key in RESUME_TRAIN_KEYS)))


def flat_values(cfg: RunConfig) -> dict[str, Any]:
    """Flat key -> JSON value of every setting of ``cfg`` (all sections)."""
    doc = cfg.to_dict()
    out: dict[str, Any] = {}
    for key, path in flat_fields(cfg.experiment).items():
        node: Any = doc
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        out[key] = node
    return out


def flat_diff(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Flat key -> ``(old, new)`` of every setting that differs (for the run log)."""
    a, b = flat_values(old), flat_values(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _with(saved: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """``saved`` with flat ``overrides`` set at their nested paths, validated."""
    paths = flat_fields(saved.experiment)
    doc = saved.to_dict()
    for key, value in overrides.items():
        node = doc
        for part in paths[key][:-1]:
            node = node.setdefault(part, {})
        node[paths[key][-1]] = value
    return validate_nested(doc)


def resume_config(saved: RunConfig, flat: dict[str, Any]) -> RunConfig:
    """The config a ``--resume`` runs: ``saved`` with the runtime options in ``flat`` applied.

    Raises :class:`ConfigError` for the first option (by name) that is not a
    runtime option and differs from its saved value, naming it, its value and
    the options allowed with ``--resume``; an invalid runtime value is a
    ConfigError naming that option.
    """
    allowed = resume_keys(saved.experiment)
    paths = flat_fields(saved.experiment)
    saved_values = flat_values(saved)
    for key in sorted(k for k in flat if k not in allowed):
        if key in paths:
            try:  # compare validated values: "--lr 3e-3" equals a saved 0.003
                same = flat_values(_with(saved, {key: flat[key]}))[key] == saved_values[key]
            except ConfigError:
                same = False
            if same:
                continue
            why = (f"cannot change on --resume: it is part of the experiment "
                   f"(saved value {saved_values[key]!r})")
        else:
            why = f"cannot be given on --resume: not an option of this run's experiment '{saved.experiment}'"
        raise ConfigError(key, flat[key], f"{why}; options allowed with --resume: {', '.join(allowed)}")
    return _with(saved, {k: v for k, v in flat.items() if k in allowed})

"""Typed run configuration shared by every experiment family.

The resolved config is nested (``train``, ``telemetry``, ``family``), but users
set it through flat keys (``--lr``, ``lr: [0.1, 0.01]`` in a sweep YAML): every
leaf field name is unique across sections, and :func:`flat_fields` maps the
flat name to its path. Each component owns its defaults in its own section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.errors import ConfigError


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainConfig(Section):
    """Optimisation and reproducibility settings common to all families."""

    batch_size: int = Field(64, gt=0, description="Mini-batch size.")
    lr: float = Field(3e-3, gt=0, le=10, description="Learning rate of the main optimizer.")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="Main optimizer.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (sgd only).")
    seed: int = Field(42, ge=0, le=2**63 - 1, description="RNG seed for data, init and shuffling.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Compute device; auto picks cuda when available."
    )
    threads: int = Field(
        1, ge=0, le=1024,
        description="CPU threads for torch ops (0: torch's default, all cores). Small models "
        "run fastest on 1; more threads only pay off for wide layers or big batches.",
    )
    checkpoint_every: int = Field(
        1, ge=0, description="Epochs between atomic checkpoints (0 disables)."
    )
    nproc: int = Field(
        1, ge=1, le=1024, description="Processes of a data-parallel run (DDP; gloo on CPU, nccl on CUDA; "
        "seeds, neurogenesis and plasticity only). Each trains on its shard of every batch, structural "
        "changes stay in lockstep. Not in the config hash: the math is the single-process run's up to "
        "float summation order.")
    # -- divergence: the trainer's own checks, the same for every family ----------
    on_diverge: Literal["stop", "rollback"] = Field(
        "stop", description="On a non-finite loss: stop (status diverged), or roll back to the last "
        "good checkpoint, scale the learning rate by rollback_lr_factor and continue.")
    max_rollbacks: int = Field(
        3, ge=1, le=100, description="Rollbacks allowed before the run ends diverged (on_diverge rollback).")
    rollback_lr_factor: float = Field(
        0.5, gt=0, lt=1, description="Learning-rate multiplier applied at each rollback.")
    explode_factor: float = Field(
        5.0, gt=1, le=1e6, description="An epoch's watched loss (mean train loss; neurogenesis: val loss) "
        "above this multiple of its baseline (the lower of the loss at initialisation and the best epoch "
        "so far) is an exploding evaluation.")
    explode_patience: int = Field(
        1, ge=0, le=10000, description="Consecutive exploding evaluations that make an explosion "
        "(an event, counted and alerted on; 0 disables).")
    impact_settle: int = Field(
        2, ge=1, le=10000, description="Evaluations after a structural change (germination, blend, "
        "growth, replacement, ...) at which its effect on the quality figure is measured.")
    impact_tolerance: float = Field(
        0.02, ge=0, le=100, description="A structural change is harmful when the quality figure "
        "(e.g. val loss) after its settle window is worse than before by more than this fraction.")
    impact_streak: int = Field(
        3, ge=0, le=1000, description="Harmful structural changes in a row (with no improving one "
        "between) that raise StructuralChangesHurting (0 disables the alert for the run).")
    impact_net_limit: float = Field(
        0.05, ge=0, le=100, description="Net relative worsening of the quality figure inside all settled "
        "structural changes' windows that raises StructuralChangesHurting, catching harm in steps "
        "each under impact_tolerance (0 disables).")
    # -- fault drills: every family has them, applied by the trainer ----------------
    fault_nan_step: int = Field(
        -1, ge=-1, description="Fault drill: make the loss of this step NaN (-1 off; fires once per process).")
    fault_exception_step: int = Field(
        -1, ge=-1, description="Fault drill: raise an exception at this step (status failed; -1 off).")
    fault_lr_scale_step: int = Field(
        -1, ge=-1, description="Fault drill: multiply every learning rate by fault_lr_scale at this "
        "step, so the loss blows up (-1 off).")
    fault_lr_scale: float = Field(
        1000.0, gt=0, le=1e9, description="Learning-rate multiplier of the fault_lr_scale_step drill.")


class TelemetryConfig(Section):
    """Which sinks run and how the metrics endpoint is served."""

    metrics_port: int = Field(
        8000, ge=0, le=65535, description="Prometheus endpoint port (0 disables)."
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address to bind; 0.0.0.0 inside containers."
    )
    auto_port: bool = Field(
        False, description="If the metrics port is busy, take the next free one."
    )
    metrics_linger: float = Field(
        30.0,
        ge=0,
        le=86400,
        description="Most seconds the endpoint keeps serving the final values after the run, "
        "until one scrape has seen them. A run that ended diverged, failed or interrupted always "
        "waits (even if never scraped yet), so the default is twice the longest scrape interval "
        "shipped (15 s); a healthy finish waits only if something was scraping it.",
    )
    metrics_hold: float = Field(
        0.0, ge=0, le=86400,
        description="Seconds the endpoint keeps serving after the run in any case "
        "(e.g. so an alert on the final state is routed before the target goes away).",
    )
    tensorboard: bool = Field(True, description="Write TensorBoard event files.")
    histogram_every: int = Field(
        5, ge=1, le=100000, description="Epochs between per-neuron TensorBoard histograms "
        "(every epoch's full values are in neurons.jsonl).")
    mlflow: bool = Field(False, description="Log to MLflow (MLFLOW_TRACKING_URI).")
    console: Literal["auto", "rich", "plain", "off"] = Field(
        "auto", description="Live console: rich on a terminal, plain lines otherwise."
    )
    strict_sinks: bool = Field(
        False, description="Stop the run when a telemetry sink fails."
    )
    neuron_topk: int = Field(
        3, ge=0, le=16, description="Top-k per-neuron values exported per layer."
    )
    report: bool = Field(
        True, description="Write report.html (an offline HTML report) into the run or sweep directory "
        "when it ends, however it ends.")


class RunConfig(Section):
    """The full, resolved configuration of one run."""

    experiment: str = Field("seeds", description="Experiment family to run.")
    output_dir: Path = Field(Path("results"), description="Root directory for results.")
    train: TrainConfig = Field(default_factory=TrainConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    family: Any = Field(default=None, description="The family's own config section.")

    @model_validator(mode="before")
    @classmethod
    def _validate_family(cls, data: Any) -> Any:
        # The family section's type depends on the experiment name, so it is
        # validated here against the registered config class.
        from engine.registry import get_experiment

        if isinstance(data, dict):
            data = dict(data)
            spec = get_experiment(str(data.get("experiment", "seeds")))
            train = data.get("train")
            if spec.train_defaults and (train is None or isinstance(train, dict)):
                data["train"] = {**spec.train_defaults, **(train or {})}
            fam = data.get("family")
            if not isinstance(fam, spec.config_cls):
                data["family"] = spec.config_cls.model_validate(fam or {})
        return data

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON friendly)."""
        return self.model_dump(mode="json")


def _leaves(model_cls: type[BaseModel], prefix: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for name, field in model_cls.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(_leaves(ann, prefix + (name,)))
        elif name != "family":
            out[name] = prefix + (name,)
    return out


def flat_fields(experiment: str) -> dict[str, tuple[str, ...]]:
    """Map each flat key (``lr``) to its nested path (``("train", "lr")``)."""
    from engine.registry import get_experiment

    out = _leaves(RunConfig, ())
    out.update(_leaves(get_experiment(experiment).config_cls, ("family",)))
    return out


def field_info(experiment: str, key: str) -> Any:
    """The pydantic ``FieldInfo`` behind a flat key."""
    from engine.registry import get_experiment

    path = flat_fields(experiment)[key]
    cls: type[BaseModel] = RunConfig
    if path[0] == "family":
        cls, path = get_experiment(experiment).config_cls, path[1:]
    for part in path[:-1]:
        cls = cls.model_fields[part].annotation  # type: ignore[assignment]
    return cls.model_fields[path[-1]]


def build_config(flat: dict[str, Any]) -> RunConfig:
    """Validate flat key/value overrides into a :class:`RunConfig`.

    Raises :class:`ConfigError` naming the first bad key, its value and what is
    allowed (unknown keys list the valid ones).
    """
    experiment = str(flat.get("experiment", "seeds"))
    paths = flat_fields(experiment)
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if key not in paths:
            raise ConfigError(key, value, "unknown key; allowed: " + ", ".join(sorted(paths)))
        node = nested
        for part in paths[key][:-1]:
            node = node.setdefault(part, {})
        node[paths[key][-1]] = value
    return validate_nested(nested, paths)


def validate_nested(nested: dict[str, Any], paths: dict[str, tuple[str, ...]] | None = None) -> RunConfig:
    """Validate a nested dict (e.g. a saved ``config.yaml``) into a RunConfig."""
    try:
        return RunConfig.model_validate(nested)
    except ValidationError as exc:
        raise _to_config_error(exc, nested) from None


def _to_config_error(exc: ValidationError, nested: dict[str, Any]) -> ConfigError:
    err = exc.errors()[0]
    inner = (err.get("ctx") or {}).get("error")
    if isinstance(inner, ConfigError):  # raised by a cross-field validator: already precise
        return inner
    loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
    key = loc[-1] if loc else "config"
    value = err.get("input")
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "literal_error":
        msg = "allowed: " + msg.split("Input should be ", 1)[-1]
    else:
        msg = msg[0].lower() + msg[1:]
    return ConfigError(key, value, msg)


def dump_yaml(cfg: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    import yaml

    from engine.fsutil import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_yaml(path: Path) -> RunConfig:
    """Read a resolved ``config.yaml`` written by :func:`dump_yaml`."""
    import yaml

    return validate_nested(yaml.safe_load(path.read_text()) or {})


#: Fields that do not change a run's result, so they do not change its id.
_ID_EXCLUDED = ("output_dir", "telemetry")


def parameters(cfg: RunConfig) -> dict[str, Any]:
    """Flat key -> value of every result-relevant setting (telemetry and output excluded)."""
    out: dict[str, Any] = {}
    doc = cfg.to_dict()
    for key, path in flat_fields(cfg.experiment).items():
        if path[0] in _ID_EXCLUDED:
            continue
        node: Any = doc
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            out[key] = node
    return out


def config_hash(cfg: RunConfig, length: int = 10) -> str:
    """Stable run id: sha256 of the canonical JSON of the result-relevant config."""
    import hashlib
    import json

    doc = {k: v for k, v in cfg.to_dict().items() if k not in _ID_EXCLUDED}
    for key in ("checkpoint_every", "threads", "device", "nproc"):  # how or where, not what, is computed
        doc.get("train", {}).pop(key, None)
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]

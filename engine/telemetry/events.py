"""Typed events the trainer publishes on the bus.

Events are plain frozen dataclasses with primitive or numpy payloads, so sinks
never need to import torch or the model. Per-neuron signals travel as 1-D numpy
arrays (shape ``[units]``); sinks reduce them to bounded per-layer summaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Terminal run statuses, as written to ``metrics.json`` and exported.
RUN_STATUSES = ("running", "finished", "diverged", "interrupted", "failed")
#: Lifecycle states of a morphogenetic seed.
SEED_STATES = ("dormant", "training", "blending", "active", "fossilized", "failed")
#: Training phases of every family (seeds: warm_up, adaptation; neurogenesis:
#: base, incremental; plasticity: stream), plus ``done`` after the run.
PHASES = ("warm_up", "adaptation", "base", "incremental", "stream", "done")
#: Kinds of structural change a mechanism can make (a bounded label value).
#: Seeds: germinate, blend_start, blend_end, fossilize, cull, seed_rollback; neurogenesis:
#: grow; continual backprop / ReDo: replace; later families: prune, apoptosis,
#: regrow, head_prune, head_clone.
#: Kinds that end a subject's lifecycle (a seed kept or undone): its net effect is
#: counted when one of them settles (see engine.training.impact).
TERMINAL_KINDS = ("fossilize", "cull", "seed_rollback")
STRUCTURAL_KINDS = ("germinate", "blend_start", "blend_end", "fossilize", "cull", "seed_rollback", "grow", "prune",
                    "replace", "apoptosis", "regrow", "head_prune", "head_clone")


@dataclass(frozen=True)
class RunStarted:
    """A run begins: its identity and the resolved config (nested dict)."""

    run_id: str
    experiment: str
    config: dict[str, Any]
    run_dir: str
    device: str
    parameters: int
    total_epochs: int
    start_epoch: int = 0
    germinations: int = 0  # restored from a checkpoint, so counters stay cumulative
    phases: tuple[str, ...] = ("warm_up", "adaptation")  # the family's phases, in order
    config_hash: str = ""  # hash of the result-relevant config: groups launches of one config
    start_step: int = 0  # restored from a checkpoint, like start_epoch


@dataclass(frozen=True)
class StepCompleted:
    """One optimisation step finished (the heartbeat)."""

    step: int
    loss: float
    finite: bool
    timestamp: float


@dataclass(frozen=True)
class SeedSnapshot:
    """State of one seed at the end of an epoch."""

    seed_id: str
    layer: str
    state: str
    alpha: float
    drift: float
    health: float
    train_loss: float


@dataclass(frozen=True)
class LayerSignal:
    """A per-neuron signal of one layer, e.g. mean |activation| (shape ``[units]``)."""

    layer: str
    signal: str
    values: np.ndarray
    dead_threshold: float = 0.0


@dataclass(frozen=True)
class Sample:
    """One value of a labelled catalog metric, set by an experiment family.

    ``metric`` is the catalog short name (without the prefix); ``labels`` are
    the values of its labels after ``run_id``, in catalog order. For counters
    ``value`` is the run's cumulative total (restored on resume), never an
    increment, so sinks stay correct across restarts.
    """

    metric: str
    labels: tuple[str, ...]
    value: float

    def __post_init__(self) -> None:
        # A typo here would otherwise surface only as a sink error at run time.
        from engine.telemetry.catalog import BY_NAME, PREFIX

        spec = BY_NAME.get(f"{PREFIX}_{self.metric}")
        if spec is None:
            raise KeyError(f"metric {self.metric!r} is not in the catalog")
        if len(self.labels) != len(spec.labels) - 1:
            raise ValueError(f"metric {self.metric!r} takes labels {spec.labels[1:]}, got {self.labels}")


@dataclass(frozen=True)
class MetricSamples:
    """Family-specific measurements (e.g. per-layer rank, per-class error).

    Experiments emit it from ``train_step`` (diagnostics every K steps) or
    ``end_epoch``; ``step`` is the trainer's step count when measured.
    """

    step: int
    epoch: int
    samples: tuple[Sample, ...]


@dataclass(frozen=True)
class EpochCompleted:
    """End-of-epoch metrics (scalars keyed by catalog short names)."""

    epoch: int
    phase: str
    step: int
    metrics: dict[str, float]
    seeds: tuple[SeedSnapshot, ...] = ()
    layers: tuple[LayerSignal, ...] = ()
    plateau: int = 0
    patience: int = 0
    progress: float = 0.0
    parameters: int = 0
    duration_seconds: float = 0.0
    samples_per_second: float = 0.0


@dataclass(frozen=True)
class SeedTransition:
    """A seed changed state (germinated, began blending, became active, failed)."""

    seed_id: str
    layer: str
    from_state: str
    to_state: str
    epoch: int
    reason: str = ""


@dataclass(frozen=True)
class StructuralChange:
    """A mechanism changed the model's structure (returned by an experiment, published by the trainer).

    Returned in ``StepResult.events`` when the change happened during a step
    (its quality "before" is then the last evaluation before that epoch), or in
    ``EpochReport.events`` when it was decided after the epoch's evaluation
    (its "before" is that evaluation). Mechanisms that act every few steps
    (continual backprop) aggregate: at most one event per layer per
    diagnostics interval, ``units`` counting what changed.
    """

    kind: str  # one of STRUCTURAL_KINDS
    layer: str  # the layer's name (bounded), e.g. "layers.3"
    epoch: int
    units: int = 1  # units, seeds or heads changed
    subject: str = ""  # e.g. the seed id (never exported as a label)
    reason: str = ""
    step: int = -1  # the trainer's step count when published (set by the trainer)
    quality_before: float = float("nan")  # the family's own "before" figure, when it measured one


    def __post_init__(self) -> None:
        if self.kind not in STRUCTURAL_KINDS:
            raise ValueError(f"structural kind {self.kind!r} not in {STRUCTURAL_KINDS}")


@dataclass(frozen=True)
class StructuralImpact:
    """What a structural change did to the family's quality figure, once its settle window passed.

    ``before`` is the quality figure (lower is better, e.g. validation loss) at
    the last evaluation before the change, ``after`` the one ``settled``
    evaluations later (fewer when the run ended first). ``delta`` is
    ``after - before`` (positive: worse); ``relative`` divides it by
    ``|before|``. ``harmful`` when ``relative`` exceeds the run's tolerance.
    Accuracy figures are NaN for families without accuracy.
    """

    kind: str
    layer: str
    epoch: int  # epoch of the change
    step: int  # step count at the change
    units: int
    subject: str
    metric: str  # name of the quality figure, e.g. "val_loss"
    before: float
    after: float
    delta: float
    relative: float
    harmful: bool
    settled: int  # evaluations between before and after
    accuracy_before: float = float("nan")
    accuracy_after: float = float("nan")
    streak: int = 0  # the run's harmful streak after this impact (see engine.training.impact)
    net: float = 0.0  # the run's net relative quality change inside settled changes' windows so far

    def describe(self) -> str:
        """One line for logs, TensorBoard text and annotations: what changed, before -> after."""
        units = f" ({self.units} units)" if self.units != 1 else ""
        who = f" {self.subject}" if self.subject else ""
        verdict = "harmful" if self.harmful else "ok"
        return (f"epoch {self.epoch + 1}: {self.kind}{who} on {self.layer}{units}: {self.metric} "
                f"{self.before:.4g} -> {self.after:.4g} ({self.relative:+.1%}) after {self.settled} "
                f"evaluation(s), {verdict}")


@dataclass(frozen=True)
class NonFiniteLoss:
    """A step produced a NaN/Inf loss."""

    step: int  # index of the failing step, from 0 (the step passed to train_step)
    epoch: int
    value: float


@dataclass(frozen=True)
class LossExplosion:
    """The watched loss stayed far above its baseline for ``patience`` evaluations (once per episode)."""

    epoch: int
    step: int
    loss: float  # the epoch's watched loss (train loss, or the family's choice)
    ratio: float  # over its baseline: min(loss at initialisation, best epoch so far)
    evaluations: int  # consecutive exploding evaluations (= the patience)


@dataclass(frozen=True)
class Rollback:
    """After a non-finite loss the run went back to its last good checkpoint.

    Published before the :class:`NonFiniteLoss` of the same step, so a scrape
    never sees more non-finite steps than rollbacks for a recovered run.
    """

    step: int  # index of the failing step
    epoch: int  # epoch of the failing step
    to_step: int  # the checkpoint's step count, where training continues
    to_epoch: int  # the first epoch run again
    attempt: int  # 1 for the first rollback of the run
    max_rollbacks: int
    lr_scale: float  # cumulative learning-rate multiplier from now on
    value: float  # the non-finite loss


@dataclass(frozen=True)
class RunEnded:
    """A run ended with a terminal status and its final metrics."""

    run_id: str
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True)
class SinkFailed:
    """A sink raised; published once per sink so others can count it."""

    sink: str
    error: str

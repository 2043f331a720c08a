"""The ``apoptosis`` family: a char-level transformer whose units die, regrow and grow.

Phases: ``train`` (corpus A, ``max_iters`` steps) and, for a domain-shift
stream, ``shift`` (corpus B, ``shift_iters`` steps); an epoch is
``eval_every`` steps followed by an evaluation on fixed validation batches.
After every optimizer step the apoptosis mechanism
(:mod:`engine.mechanisms.apoptosis`) may return plans (deaths, regrowth,
growth, fade steps) that :func:`engine.surgery.apply_plan` applies to weights,
per-unit buffers and optimizer state. What it did goes out as
:class:`StructuralChange` events (at most one per group and kind per
interval), per-group unit counts, births, deaths, utility and age quantiles
as catalog samples, and text samples at phase ends and after structural
events. The family also watches the perplexity right after structural events
(``perplexity_jumps_total``) and exports the death rate that counts
as a storm.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.config import RunConfig
from engine.experiments._apoptosis_artifacts import write_apoptosis_artifacts
from engine.experiments._apoptosis_config import TRAIN_DEFAULTS, ApoptosisFamilyConfig
from engine.experiments._apoptosis_telemetry import group_samples, storm_limit
from engine.experiments._char_family import CharFamily
from engine.experiments._char_lm import Batch
from engine.experiments.base import EpochReport, StepResult
from engine.mechanisms.apoptosis import Apoptosis
from engine.registry import register_experiment
from engine.surgery import apply_plan
from engine.telemetry.events import MetricSamples, Sample, StructuralChange

log = logging.getLogger(__name__)

__all__ = ["ApoptosisExperiment", "ApoptosisFamilyConfig"]


@register_experiment("apoptosis", ApoptosisFamilyConfig,
                     "Char-level transformer with neuron apoptosis: five strategies, eleven layer patterns",
                     train_defaults=TRAIN_DEFAULTS)
class ApoptosisExperiment(CharFamily):
    """Language model, apoptosis mechanism and their telemetry for one run."""

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        super().__init__(cfg, device)
        self.fam: ApoptosisFamilyConfig = cfg.family
        self.mech = Apoptosis(self.lm.model, self.fam.apoptosis, self.lm.gen)
        self.storm_limit = storm_limit(self.mech, self.fam.death_storm_factor, 1.0)  # until a speed is measured

    # -- training --------------------------------------------------------------------------
    def compute_loss(self, batch: Batch, step: int) -> Tensor:
        """Next-character cross-entropy; units record their mean |output| while the mechanism needs it."""
        self.lm.model.set_recording(self.mech.wants_activity(step))
        return self.lm.loss(batch)

    def apply_update(self, batch: Batch, step: int, loss: Tensor) -> StepResult:
        """Optimizer step, then the mechanism's plans through surgery; structural events per interval."""
        grad_norm = self.lm.update(batch, step, loss)
        plans = self.mech.step(step, self._probe)
        if step == self.fam.apoptosis_drill_step:  # fault drill: a mechanism gone wrong
            for plan in plans:
                apply_plan(self.lm.model, self.lm.optimizer, plan, self.lm.gen)
            plans = self.mech.drill(step, self.fam.apoptosis_drill_fraction)
            log.warning("fault drill: killing %.0f%% of every selected group's most useful units at step %d",
                        100 * self.fam.apoptosis_drill_fraction, step)
        for plan in plans:
            apply_plan(self.lm.model, self.lm.optimizer, plan, self.lm.gen)
        self.step = step + 1
        events: list[Any] = []
        if not self._announced:  # counters and limits exposed from the start (and after a resume)
            self._announced = True
            events.append(MetricSamples(self.step, self._epoch(), self._samples_now()))
        for rec in self.mech.records():
            events.append(StructuralChange(rec.kind, rec.group, self._epoch(), rec.units, reason=rec.reason))
            self.watch.structural()
        return StepResult(len(batch[0]), grad_norm, events)

    def _probe(self) -> Batch:
        """The probe batch functional preservation measures ablations on (a fixed validation batch)."""
        x, y = self.lm.val_batch(self._key)
        return x[: self.fam.apoptosis.probe_batch], y[: self.fam.apoptosis.probe_batch]

    # -- evaluation ----------------------------------------------------------------------------
    def end_epoch(self, epoch: int, phase: str) -> EpochReport:
        """Validation loss and perplexity, perplexity jump after events, samples, per-group signals."""
        first, last = self._phase_edges(epoch, phase)
        metrics = self.watch.evaluate(self._key, first, self.step)
        steps_per_minute = 60 * metrics["tokens_per_second"] / (self.cfg.train.batch_size * self.fam.block_size)
        if steps_per_minute > 0:
            self.storm_limit = storm_limit(self.mech, self.fam.death_storm_factor, steps_per_minute)
        events: list[Any] = list(self.watch.due_samples(self.step, epoch, phase, last))
        events.append(MetricSamples(self.step, epoch, self._samples_now(metrics)))
        self._record(phase, metrics, {f"units/{g}": n for g, n in self.lm.model.unit_counts().items()})
        return EpochReport(metrics, events, layers=self.watch.layer_signals(self._probe()[0]))

    def _samples_now(self, metrics: dict[str, float] | None = None) -> tuple[Sample, ...]:
        return tuple(self.watch.catalog_samples(metrics) + [Sample("apoptosis_death_storm_limit", (), self.storm_limit)]
                     + group_samples(self.mech))

    # -- bookkeeping ---------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The corpora (sources, sizes, SHA-256, attribution) and the unit groups the pattern selected."""
        return {**self.lm.corpus.manifest(), "unit_groups": self.lm.model.unit_counts(),
                "selected_groups": self.mech.rates()}

    def write_artifacts(self, directory: Path) -> None:
        """history.csv, lineage.csv, samples.txt, units.json and curves.png."""
        write_apoptosis_artifacts(directory, self.history, self.mech.lineage(), self.watch.samples,
                                  self.lm.model.unit_counts())

    def state_dict(self) -> dict[str, Any]:
        """Model (with its unit counts), optimizer, generators, mechanism, watch and history."""
        return {**self._base_state(), "mechanism": self.mech.state_dict(), "storm_limit": self.storm_limit}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the model is rebuilt at the checkpoint's unit counts first)."""
        self._load_base_state(state)
        self.mech.load_state_dict(state["mechanism"])
        self.storm_limit = float(state["storm_limit"])

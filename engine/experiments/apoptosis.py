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
import math
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from engine.config import RunConfig
from engine.experiments._apoptosis_artifacts import write_apoptosis_artifacts
from engine.experiments._apoptosis_config import TRAIN_DEFAULTS, ApoptosisFamilyConfig
from engine.experiments._apoptosis_telemetry import group_samples, storm_limit
from engine.experiments._char_lm import Batch, CharLM
from engine.experiments.base import EpochReport, StepResult
from engine.mechanisms.apoptosis import Apoptosis
from engine.registry import register_experiment
from engine.surgery import apply_plan
from engine.telemetry.events import LayerSignal, MetricSamples, Sample, StructuralChange, TextSample

log = logging.getLogger(__name__)

__all__ = ["ApoptosisExperiment", "ApoptosisFamilyConfig"]


@register_experiment("apoptosis", ApoptosisFamilyConfig,
                     "Char-level transformer with neuron apoptosis: five strategies, eleven layer patterns",
                     train_defaults=TRAIN_DEFAULTS)
class ApoptosisExperiment:
    """Language model, apoptosis mechanism and their telemetry for one run."""

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        fam: ApoptosisFamilyConfig = cfg.family
        self.cfg, self.fam, self.device = cfg, fam, device
        self.lm = CharLM(cfg, fam, device)
        self.mech = Apoptosis(self.lm.model, fam.apoptosis, self.lm.gen)
        self.storm_limit = storm_limit(self.mech, fam.death_storm_factor, 1.0)  # until a speed is measured
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []  # every text sample: step, tag, text
        self.jumps = 0
        self.jump_ratio = 1.0
        self._ppl_before: float | None = None  # perplexity at the evaluation before the pending events
        self._events_pending = False  # structural events since the last evaluation
        self._sample_due = False  # events since the last text sample
        self._last_sample_step = -fam.sample_every
        self._announced = False
        self._key = "a"  # corpus of the phase being trained

    # -- schedule and data -------------------------------------------------------------
    def phases(self) -> list[tuple[str, int]]:
        """``train`` on corpus A, then ``shift`` on corpus B when ``shift_iters`` > 0."""
        out = [("train", self.fam.max_iters // self.fam.eval_every)]
        if self.fam.shift_iters:
            out.append(("shift", self.fam.shift_iters // self.fam.eval_every))
        return out

    def batches(self, epoch: int, phase: str) -> Iterator[Batch]:
        """``eval_every`` random windows of the phase's corpus."""
        self._key = "a" if phase == "train" else "b"
        return self.lm.batches(phase)

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
            self._events_pending = self._sample_due = True
        return StepResult(len(batch[0]), grad_norm, events)

    def _epoch(self) -> int:
        return max(self.step - 1, 0) // self.fam.eval_every

    def _probe(self) -> Batch:
        """The probe batch functional preservation measures ablations on (a fixed validation batch)."""
        x, y = self.lm.val_batch(self._key)
        return x[: self.fam.apoptosis.probe_batch], y[: self.fam.apoptosis.probe_batch]

    # -- evaluation ----------------------------------------------------------------------------
    def end_epoch(self, epoch: int, phase: str) -> EpochReport:
        """Validation loss and perplexity, perplexity jump after events, samples, per-group signals."""
        key = "a" if phase == "train" else "b"
        val = self.lm.evaluate(key)
        ppl = math.exp(min(val, 50.0))
        metrics: dict[str, float] = {"val_loss": val, "val_perplexity": ppl, "tokens_per_second": 0.0}
        if key == "b":  # forgetting of corpus A during the shift (history only)
            metrics["val_loss_a"] = self.lm.evaluate("a")
        first_of_phase = epoch == 0 or (phase == "shift" and epoch == self.fam.max_iters // self.fam.eval_every)
        if first_of_phase:
            self._ppl_before = None  # a new corpus: perplexities of different corpora do not compare
        if self._events_pending and self._ppl_before is not None:
            self.jump_ratio = ppl / self._ppl_before
            if self.fam.perplexity_jump_limit > 0 and self.jump_ratio > self.fam.perplexity_jump_limit:
                self.jumps += 1
                log.warning("validation perplexity jumped %.3gx (%.4g -> %.4g) after structural changes "
                            "before step %d", self.jump_ratio, self._ppl_before, ppl, self.step)
        self._events_pending = False
        self._ppl_before = ppl
        metrics["tokens_per_second"] = self.lm.tokens_per_second()
        steps_per_minute = 60 * metrics["tokens_per_second"] / (self.cfg.train.batch_size * self.fam.block_size)
        if steps_per_minute > 0:
            self.storm_limit = storm_limit(self.mech, self.fam.death_storm_factor, steps_per_minute)
        events: list[Any] = []
        last_of_phase = self.step in (self.fam.max_iters, self.fam.max_iters + self.fam.shift_iters)
        if last_of_phase or (self._sample_due and self.step - self._last_sample_step >= self.fam.sample_every):
            events.append(self._text_sample(epoch, f"phase_end/{phase}" if last_of_phase else "after/structural"))
        events.append(MetricSamples(self.step, epoch, self._samples_now(metrics)))
        self.history.append({"step": self.step, "phase": phase, **{k: metrics[k] for k in sorted(metrics)},
                             **{f"units/{g}": n for g, n in self.lm.model.unit_counts().items()}})
        return EpochReport(metrics, events, layers=self._layer_signals())

    def _text_sample(self, epoch: int, tag: str) -> TextSample:
        text = self.lm.sample() if self.fam.sample_chars > 0 else ""
        self._sample_due, self._last_sample_step = False, self.step
        self.samples.append({"step": self.step, "tag": tag, "text": text})
        return TextSample(self.step, epoch, tag, text)

    def _samples_now(self, metrics: dict[str, float] | None = None) -> tuple[Sample, ...]:
        out = [Sample("text_samples_total", (), float(len(self.samples))),
               Sample("apoptosis_death_storm_limit", (), self.storm_limit),
               Sample("perplexity_jump_ratio", (), self.jump_ratio),
               Sample("perplexity_jump_limit_ratio", (), self.fam.perplexity_jump_limit),
               Sample("perplexity_jumps_total", (), float(self.jumps))]
        if metrics is not None:
            out += [Sample("val_perplexity", (), metrics["val_perplexity"]),
                    Sample("tokens_per_second", (), metrics["tokens_per_second"])]
        return tuple(out + group_samples(self.mech))

    @torch.no_grad()
    def _layer_signals(self) -> tuple[LayerSignal, ...]:
        """Mean |output| per unit on a validation batch (units alive, dead units, quantiles)."""
        model = self.lm.model
        x, _ = self._probe()
        model.eval()
        model.set_recording(True)
        model(x)
        out = [LayerSignal(u.name, "activation_abs_mean", model.get_submodule(u.name).last_abs.cpu().numpy())
               for u in model.unit_layers()]
        model.set_recording(False)
        return tuple(out)

    # -- bookkeeping ---------------------------------------------------------------------------
    def parameter_count(self) -> int:
        """Model parameters (changes with growth and pruning)."""
        return self.lm.parameter_count()

    def learning_rate(self) -> float:
        """The optimizer's current (scheduled) rate."""
        return self.lm.learning_rate()

    def scale_learning_rate(self, factor: float) -> None:
        """Scale the schedule's base rate (rollbacks, fault drill)."""
        self.lm.scale_learning_rate(factor)

    def manifest(self) -> dict[str, Any]:
        """The corpora (sources, sizes, SHA-256, attribution) and the unit groups the pattern selected."""
        return {**self.lm.corpus.manifest(), "unit_groups": self.lm.model.unit_counts(),
                "selected_groups": self.mech.rates()}

    def write_artifacts(self, directory: Path) -> None:
        """history.csv, lineage.csv, samples.txt, units.json and curves.png."""
        write_apoptosis_artifacts(directory, self.history, self.mech.lineage(), self.samples,
                                  self.lm.model.unit_counts())

    def state_dict(self) -> dict[str, Any]:
        """Model (with its unit counts), optimizer, generators, mechanism and the family's counters."""
        return {"lm": self.lm.state_dict(), "mechanism": self.mech.state_dict(), "step": self.step,
                "history": [dict(h) for h in self.history], "samples": [dict(s) for s in self.samples],
                "jumps": self.jumps, "jump_ratio": self.jump_ratio, "ppl_before": self._ppl_before,
                "events_pending": self._events_pending, "sample_due": self._sample_due,
                "last_sample_step": self._last_sample_step, "storm_limit": self.storm_limit}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the model is rebuilt at the checkpoint's unit counts first)."""
        self.lm.load_state_dict(state["lm"])
        self.mech.load_state_dict(state["mechanism"])
        self.step = int(state["step"])
        self.history = [dict(h) for h in state["history"]]
        self.samples = [dict(s) for s in state["samples"]]
        self.jumps, self.jump_ratio = int(state["jumps"]), float(state["jump_ratio"])
        self._ppl_before = state["ppl_before"]
        self._events_pending, self._sample_due = bool(state["events_pending"]), bool(state["sample_due"])
        self._last_sample_step = int(state["last_sample_step"])
        self.storm_limit = float(state["storm_limit"])
        self._announced = False

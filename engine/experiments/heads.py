"""The ``heads`` family: attention-head plasticity in a char-level transformer.

The model trains like the apoptosis family's (same LM core, data, schedule and
samples). At every evaluation a warm-up detector
(:class:`~engine.mechanisms.stabilisation.WarmupDetector`) watches the
validation loss; no structural decision happens before it calls the loss
stable (that step is a ``warmup_stable`` milestone). From then on, every
``decision_every`` steps, a decision round measures each head's importance
(Michel et al. 2019: |dL/d gate|, normalised per layer) and attention entropy
on fixed training windows, then:

* ``prune``: removes the globally least important ``prune_fraction`` of the
  heads (:class:`~engine.mechanisms.head_plans.PruneHeads` through surgery),
  re-measures the validation loss at once and compares it with the unpruned
  model's (measured right before the first round). Above ``1 +
  quality_tolerance`` the round is a breach: it is rolled back (or kept, per
  ``breach_action``) and pruning stops.
* ``clone``: copies the most important head of a layer with room
  (:class:`~engine.mechanisms.head_plans.CloneHead`, Net2Net: the function is
  unchanged at the moment of cloning).

Every round is a :class:`Decision` event with the scores that drove it, a
text sample, and one :class:`StructuralChange` per changed layer.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.config import RunConfig
from engine.experiments._char_family import CharFamily
from engine.experiments._char_lm import Batch
from engine.experiments._heads_artifacts import write_heads_artifacts
from engine.experiments._heads_config import TRAIN_DEFAULTS, HeadsFamilyConfig
from engine.experiments.base import EpochReport, StepResult
from engine.mechanisms.head_importance import attention_entropy, head_importance, prune_order
from engine.mechanisms.head_plans import CloneHead, PruneHeads
from engine.mechanisms.stabilisation import WarmupDetector
from engine.registry import register_experiment
from engine.surgery import apply_plan
from engine.telemetry.events import Decision, MetricSamples, Milestone, Sample, StructuralChange

log = logging.getLogger(__name__)

__all__ = ["HeadsExperiment", "HeadsFamilyConfig"]


@register_experiment("heads", HeadsFamilyConfig,
                     "Char-level transformer with attention-head importance, warm-up detection, prune and clone",
                     train_defaults=TRAIN_DEFAULTS)
class HeadsExperiment(CharFamily):
    """Language model, warm-up detector, decision rounds and their telemetry for one run."""

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        super().__init__(cfg, device)
        fam: HeadsFamilyConfig = cfg.family
        self.fam = fam
        self.detector = WarmupDetector(fam.stable_window, fam.stable_threshold, fam.stable_patience)
        self.attn = [f"blocks.{i}.attn" for i in range(fam.n_layer)]
        self.decisions: list[dict[str, Any]] = []
        self.pruned = {a: 0 for a in self.attn}
        self.cloned = {a: 0 for a in self.attn}
        self.breaches = 0
        self.reference: float | None = None  # val loss of the unpruned model, right before the first prune round
        self.quality_ratio = 1.0
        self.stopped = fam.head_mode == "none"
        self.last_decision = -(10**9)
        self.scores: dict[str, dict[str, list[float]]] = {}  # last round's importance / entropy per layer

    # -- training ---------------------------------------------------------------------------------
    def compute_loss(self, batch: Batch, step: int) -> Tensor:
        """Next-character cross-entropy."""
        return self.lm.loss(batch)

    def apply_update(self, batch: Batch, step: int, loss: Tensor) -> StepResult:
        """One optimizer step (decisions happen at evaluations)."""
        grad_norm = self.lm.update(batch, step, loss)
        self.step = step + 1
        events: list[Any] = []
        if not self._announced:  # counters and limits exposed from the start (and after a resume)
            self._announced = True
            events.append(MetricSamples(self.step, self._epoch(), self._samples_now()))
        return StepResult(len(batch[0]), grad_norm, events)

    # -- evaluation and decisions --------------------------------------------------------------
    def end_epoch(self, epoch: int, phase: str) -> EpochReport:
        """Evaluate, watch warm-up, maybe run a decision round, report."""
        first, last = self._phase_edges(epoch, phase)
        metrics = self.watch.evaluate(self._key, first, self.step)
        events: list[Any] = []
        if self.detector.observe(self.step, metrics["val_loss"]):
            log.info("warm-up stabilised at step %d: structural decisions may start", self.step)
            events.append(Milestone(self.step, epoch, "warmup_stable",
                                    f"val loss {metrics['val_loss']:.4g} stable by the detector's rule"))
        # Never at a phase's last evaluation: nothing would train after it, and the run's final
        # figures (this evaluation's) would not be the final model's.
        if self.detector.stable and not self.stopped and not last \
                and self.step - self.last_decision >= self.fam.decision_every:
            events += self._decide(epoch, metrics["val_loss"])
        events += self.watch.due_samples(self.step, epoch, phase, last)
        events.append(MetricSamples(self.step, epoch, self._samples_now(metrics)))
        self._record(phase, metrics, {f"heads/{a}": n for a, n in self._heads().items()})
        x, _ = self.lm.val_batch(self._key)
        return EpochReport(metrics, events, layers=self.watch.layer_signals(x))

    def _heads(self) -> dict[str, int]:
        return {a: int(self.lm.model.get_submodule(a).n_head) for a in self.attn}

    def _score(self) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        batches = self.lm.train_windows(self._key, self.fam.importance_batches)
        norm, raw = head_importance(self.lm.model, batches)
        entropy = attention_entropy(self.lm.model, batches)
        return norm, raw, entropy

    def _decide(self, epoch: int, val_before: float) -> list[Any]:
        """One decision round: score, act, re-evaluate, record (events for the trainer)."""
        t0 = time.perf_counter()
        self.last_decision = self.step
        heads_before = self._heads()
        norm, raw, entropy = self._score()
        self.scores = {a: {"importance": norm[a].tolist(), "entropy": entropy[a].tolist()} for a in self.attn}
        snapshot = copy.deepcopy(self.lm.state_dict()) if self.fam.head_mode == "prune" else None
        plans = self._plans(norm)
        if not plans:
            self.stopped = True
            log.info("decision round at step %d: nothing to do (%s target reached); decisions stop",
                     self.step, self.fam.head_mode)
            return []
        if self.fam.head_mode == "prune" and self.reference is None:
            self.reference = val_before  # the unpruned model
        for plan in plans:
            apply_plan(self.lm.model, self.lm.optimizer, plan, self.lm.gen)
        val_after = self.lm.evaluate(self._key)
        outcome = "kept"
        if self.fam.head_mode == "prune":
            assert self.reference is not None
            self.quality_ratio = val_after / self.reference
            if self.quality_ratio > 1 + self.fam.quality_tolerance:
                self.breaches += 1
                self.stopped = True
                outcome = "rolled_back" if self.fam.breach_action == "rollback" else "kept_after_breach"
                log.warning("pruning heads raised the val loss to %.4g, %.3gx the unpruned model's %.4g (limit "
                            "%.3g): %s; pruning stops", val_after, self.quality_ratio, self.reference,
                            1 + self.fam.quality_tolerance, outcome.replace("_", " "))
                if self.fam.breach_action == "rollback" and snapshot is not None:
                    self.lm.load_state_dict(snapshot)
                    # The run continues with the restored model: its ratio is the figure
                    # HeadsPrunedPastQuality reads (a rolled-back breach is the designed stop).
                    self.quality_ratio = val_before / self.reference
        changed = [] if outcome == "rolled_back" else plans
        counts = self.pruned if self.fam.head_mode == "prune" else self.cloned
        per_layer: dict[str, int] = {}
        for plan in changed:
            n = len(plan.heads) if isinstance(plan, PruneHeads) else 1
            per_layer[plan.attn] = per_layer.get(plan.attn, 0) + n
            counts[plan.attn] += n
        seconds = time.perf_counter() - t0
        payload = {"round": len(self.decisions) + 1, "action": self.fam.head_mode, "outcome": outcome,
                   "heads_before": heads_before, "heads_after": self._heads(),
                   "changes": [self._describe(p) for p in plans],
                   "importance": self.scores, "importance_raw": {a: raw[a].tolist() for a in self.attn},
                   "val_loss_before": val_before, "val_loss_after": val_after,
                   "reference_val_loss": self.reference,
                   "quality_ratio": val_after / self.reference if self.reference else 1.0,
                   "continued_quality_ratio": self.quality_ratio,
                   "quality_limit": 1 + self.fam.quality_tolerance, "seconds": seconds,
                   "cost_steps": seconds / max(self.lm.seconds_per_step(), 1e-9)}
        self.decisions.append({"step": self.step, **payload})
        kind = "head_prune" if self.fam.head_mode == "prune" else "head_clone"
        events: list[Any] = [Decision(self.step, epoch, kind, payload)]
        events += [StructuralChange(kind, layer, epoch, n, reason=f"decision round {payload['round']}",
                                    quality_before=val_before) for layer, n in per_layer.items()]
        if per_layer:
            self.watch.structural()
        events.append(self.watch.sample(self.step, epoch, f"after/{kind}"))
        return events

    def _plans(self, norm: dict[str, Tensor]) -> list[PruneHeads | CloneHead]:
        heads = self._heads()
        total = sum(heads.values())
        if self.fam.head_mode == "prune":
            k = max(1, math.floor(self.fam.prune_fraction * total))
            if self.fam.target_heads:
                k = min(k, total - self.fam.target_heads)
            order = prune_order(norm, k, self.fam.min_heads_per_layer) if k > 0 else []
            by_layer: dict[str, list[int]] = {}
            for layer, head in order:
                by_layer.setdefault(layer, []).append(head)
            return [PruneHeads(layer, tuple(sorted(hs))) for layer, hs in by_layer.items()]
        room = [a for a in self.attn if heads[a] < self.fam.max_heads_per_layer]
        if not room or (self.fam.target_heads and total >= self.fam.target_heads):
            return []
        layer, head = max(((a, h) for a in room for h in range(heads[a])), key=lambda ah: float(norm[ah[0]][ah[1]]))
        return [CloneHead(layer, head, self.fam.clone_noise)]

    @staticmethod
    def _describe(plan: PruneHeads | CloneHead) -> dict[str, Any]:
        if isinstance(plan, PruneHeads):
            return {"layer": plan.attn, "pruned_heads": list(plan.heads)}
        return {"layer": plan.attn, "cloned_head": plan.head, "noise": plan.noise}

    def _samples_now(self, metrics: dict[str, float] | None = None) -> tuple[Sample, ...]:
        out = self.watch.catalog_samples(metrics) + [
            Sample("heads_decision_rounds_total", (), float(len(self.decisions))),
            Sample("heads_warmup_stable", (), 1.0 if self.detector.stable else 0.0),
            Sample("heads_stable_step", (), float(self.detector.stable_step if self.detector.stable else -1)),
            Sample("heads_quality_ratio", (), self.quality_ratio),
            Sample("heads_quality_limit_ratio", (), 1 + self.fam.quality_tolerance),
            Sample("heads_quality_breaches_total", (), float(self.breaches))]
        heads = self._heads()
        for a in self.attn:
            out += [Sample("heads_alive", (a,), float(heads[a])),
                    Sample("heads_pruned_total", (a,), float(self.pruned[a])),
                    Sample("heads_cloned_total", (a,), float(self.cloned[a]))]
            scores = self.scores.get(a)
            if scores is None:
                continue
            # Heads past the layer's count (pruned since) read NaN rather than a stale score.
            width = max(self.fam.max_heads_per_layer, self.fam.n_head)
            for h in range(min(width, max(len(scores["importance"]), heads[a]))):
                alive = h < len(scores["importance"]) and h < heads[a]
                out += [Sample("head_importance_ratio", (a, str(h)), scores["importance"][h] if alive else math.nan),
                        Sample("head_attention_entropy_nats", (a, str(h)), scores["entropy"][h] if alive else math.nan)]
        return tuple(out)

    # -- bookkeeping ---------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The corpora (sources, sizes, SHA-256, attribution) and the initial heads per layer."""
        return {**self.lm.corpus.manifest(), "heads": self._heads()}

    def write_artifacts(self, directory: Path) -> None:
        """history.csv, decisions.json, importance.png, samples.txt and heads.json."""
        write_heads_artifacts(directory, self.history, self.decisions, self.watch.samples, self._heads())

    def state_dict(self) -> dict[str, Any]:
        """Model (with its head and unit counts), optimizer, generators, detector, watch and decisions."""
        return {**self._base_state(), "detector": self.detector.state_dict(),
                "decisions": copy.deepcopy(self.decisions), "pruned": dict(self.pruned), "cloned": dict(self.cloned),
                "breaches": self.breaches, "reference": self.reference, "quality_ratio": self.quality_ratio,
                "stopped": self.stopped, "last_decision": self.last_decision, "scores": copy.deepcopy(self.scores)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the model is rebuilt at the checkpoint's shapes first)."""
        self._load_base_state(state)
        self.detector.load_state_dict(state["detector"])
        self.decisions = copy.deepcopy(state["decisions"])
        self.pruned, self.cloned = dict(state["pruned"]), dict(state["cloned"])
        self.breaches, self.reference = int(state["breaches"]), state["reference"]
        self.quality_ratio, self.stopped = float(state["quality_ratio"]), bool(state["stopped"])
        self.last_decision = int(state["last_decision"])
        self.scores = copy.deepcopy(state["scores"])

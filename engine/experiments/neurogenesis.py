"""The ``neurogenesis`` family: Draelos et al. 2017, class-incremental stacked autoencoder.

Phase ``base`` (``base_epochs`` epochs) trains the autoencoder on the base
classes (clean inputs). At its end the per-level outlier thresholds are
measured and stored and replay statistics fitted. Phase ``incremental`` has
one epoch per new class (a *stage*): :func:`engine.experiments._ndl_stage.run_stage`
yields the stage's batches lazily (growth, plasticity and stability phases,
or fine-tuning), then ``end_epoch`` evaluates every seen class on held-out
data, records its baseline, refreshes the replay statistics and extends the
forgetting matrix.

Replay statistics (``stats_source``): ``replay`` (default, data-free) fits a
class from its own images when it is learned; after each later stage it is
re-fitted from that class's replayed samples: the codes drawn before the
stage, moved by how the stage changed the re-encoding of their decoded images
(:func:`~engine.mechanisms.replay.transported_codes`), so statistics follow
the drifting encoder and a grown top code. ``reencode`` (data-free too) fits
the replayed images' new codes as they are. Under both, training images of a
learned class are never read again (:class:`~engine.experiments._ndl_data.ClassRows`
raises). ``data`` re-encodes every seen class's stored images after each stage.
Held-out images are only ever evaluated on, never trained or fitted on.

Each level's growth in a stage is one ``grow`` :class:`StructuralChange`
(``layer`` ``encoder.{L-1}``), judged by ``base_class_error`` (:meth:`quality_metric`).

Variants: ``neurogenesis`` x ``replay`` -> CL, CL+IR, NDL, NDL+IR (default).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from engine.config import RunConfig
from engine.data.images import load_images, stratified_split
from engine.experiments._ndl_config import TRAIN_DEFAULTS, NeurogenesisConfig
from engine.experiments._ndl_data import ClassRows
from engine.experiments._ndl_report import class_samples, stage_samples, write_all
from engine.experiments._ndl_stage import Batch, batch_loss, make_optimizer, minibatches, run_stage, update
from engine.experiments.base import EpochReport, StepResult
from engine.mechanisms.neurogenesis import GrowthGate, ThresholdStore
from engine.mechanisms.replay import ClassGaussians, transported_codes
from engine.models.autoencoder import StackedAutoencoder, per_sample_error
from engine.registry import register_experiment
from engine.telemetry.events import LayerSignal, MetricSamples, Sample, StructuralChange

__all__ = ["NeurogenesisConfig", "NeurogenesisExperiment"]


@register_experiment("neurogenesis", NeurogenesisConfig,
                     "Neurogenesis deep learning + intrinsic replay on a class-incremental autoencoder",
                     train_defaults=TRAIN_DEFAULTS)
class NeurogenesisExperiment:
    """Model, optimizer, data, neurogenesis and replay state of one run."""

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        fam: NeurogenesisConfig = cfg.family
        self.cfg, self.fam, self.device = cfg, fam, device
        seed = cfg.train.seed
        images = load_images(fam.data, seed)
        fam.check_data_classes(images.classes)
        self.images, self.shape = images, images.shape
        self.base_classes, self.order = fam.base(), fam.order()
        self.all_classes = self.base_classes + self.order
        keep = np.isin(images.y, self.all_classes)
        x, y = images.x[keep], images.y[keep]
        tr, te = stratified_split(y, fam.heldout_frac, seed)
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        # Training images are handed out per class by a guard: under data-free replay, rows of a
        # class are unreachable once it is learned. Held-out images [n_test, D] are for evaluation only.
        self.train = ClassRows(to(x[tr]), to(y[tr]), guard=fam.stats_source != "data")
        self.x_test, self.y_test = to(x[te]), to(y[te])
        self.variant = ("NDL" if fam.neurogenesis else "CL") + ("+IR" if fam.replay else "")
        torch.manual_seed(seed)  # same seed -> same initial weights and base for every variant
        self.gen = torch.Generator().manual_seed(seed)
        self._build(fam.sizes())
        self.gate = GrowthGate(fam.max_outlier_fraction, fam.units_per_step, fam.growth_cap)
        self.thresholds = ThresholdStore(fam.thresholds)
        self.stats = ClassGaussians(fam.cov_shrinkage)
        k = self.model.levels
        self.stage, self.current_class = 0, -1
        self.seen: list[int] = list(self.base_classes)
        self.stage_added, self.total_added = [0] * k, [0] * k
        self.layer_error, self.outlier_frac = [0.0] * k, [0.0] * k
        self.baselines: dict[int, float] = {}
        self.history: list[dict[str, Any]] = []  # one entry per completed stage (0 = base)
        self.replay_total = 0
        self.pending: list[tuple[Sample, ...]] = []
        self.pending_events: list[StructuralChange] = []  # queued by the stage, returned with the next step
        self.stage_epoch = -1  # trainer epoch of the running stage (StructuralChange.epoch)
        self._pool: dict[int, torch.Tensor] = {}
        self._pool_codes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._step = self._epoch = 0  # trainer position, for the step/epoch of samples
        self._scales: Any = None  # per-entry LR scales of the batch between compute_loss and apply_update
        self.lr_scale = 1.0  # rollbacks and the LR drill scale the main rate

    def _build(self, sizes: list[int]) -> None:
        self.model = StackedAutoencoder(self.train.dim, sizes, self.fam.ae_activation).to(self.device)
        tc = self.cfg.train
        self.optimizer = make_optimizer(self.model, tc.optimizer, tc.lr, tc.momentum)

    # -- schedule and data -------------------------------------------------------
    def phases(self) -> list[tuple[str, int]]:
        """Base training, then one epoch per new class."""
        return [("base", self.fam.base_epochs), ("incremental", len(self.order))]

    @staticmethod
    def watched_loss(phase: str) -> str:
        """The metric the trainer's divergence watch reads in ``phase``.

        Base training: its train loss. A class stage's train loss mixes
        level-wise losses of other scales (a stage's mean is ~14x its first
        step's), so stages are watched through the held-out reconstruction
        error, an image-space MSE like the base loss.
        """
        return "train_loss" if phase == "base" else "val_loss"

    @staticmethod
    def quality_metric(phase: str) -> str:
        """The EpochReport figure (lower is better) that judges a structural change.

        ``base_class_error``: mean held-out error of the base classes. Its class
        set never changes, unlike ``val_loss`` (the macro error over seen
        classes, which moves whenever a stage adds a class, with or without
        harm), and growth exists to learn a new class without hurting what the
        network already reconstructs: damage to old classes shows here.
        """
        return "base_class_error"

    def batches(self, epoch: int, phase: str) -> Iterator[Batch]:
        """Base: shuffled passes over base data. Incremental: the stage's algorithm, lazily."""
        self._epoch = epoch
        self.train.context = f"epoch {epoch} ({phase})"
        if phase == "base":
            for xb in minibatches(self.train.rows(self.base_classes), self.cfg.train.batch_size, 1, self.gen):
                yield Batch("base", 0, xb)
            return
        self.stage, self.stage_epoch = epoch - self.fam.base_epochs + 1, epoch
        self.current_class = self.order[self.stage - 1]
        self.stage_added = [0] * self.model.levels
        x_new = self.train.rows([self.current_class])
        self.pending.append(tuple(stage_samples(self)))
        replay = self._replay_pool(len(x_new))
        self._pool = replay
        yield from run_stage(self, x_new, replay if self.fam.replay else {})

    @torch.no_grad()
    def _replay_pool(self, n_new: int) -> dict[int, torch.Tensor]:
        """Decoded samples per earlier class, drawn before the stage changes the network.

        Trained on with replay on; under a data-free ``stats_source`` they also
        refresh the earlier classes' statistics after the stage. Without replay
        they only keep the statistics in step with the grown network (for
        ``replay_samples.png``), drawn from a side generator seeded by
        (seed, stage): training and the run's generator are untouched, so the
        variants without replay are the same under every statistics source.
        """
        fam = self.fam
        if not fam.replay and fam.stats_source == "data":
            return {}
        gen = self.gen if fam.replay else torch.Generator().manual_seed(self.cfg.train.seed * 1000 + self.stage)
        # At least 2 per class so a covariance can be re-fitted even at replay_ratio 0.
        n = max(round(fam.replay_ratio * n_new) if fam.replay else n_new, 2)
        self.model.eval()
        codes = {c: self.stats.sample(c, n, gen).to(self.device) for c in self.stats.classes}  # [n, d]
        pool = {c: self.model.decode_from(z) for c, z in codes.items()}  # class -> [n, D] images
        # Kept until the stage ends: the drawn codes and their re-encoding before the stage.
        self._pool_codes = {c: (z, self.model.code(pool[c])) for c, z in codes.items()}
        if fam.replay and fam.replay_ratio > 0:
            self.replay_total += n * len(pool)
        return pool

    # -- training -----------------------------------------------------------------
    def compute_loss(self, batch: Batch, step: int) -> torch.Tensor:
        """Loss of the batch in its phase (whole stack, or one level); its LR scales are kept."""
        loss, self._scales = batch_loss(self, batch)
        return loss

    def apply_update(self, batch: Batch, step: int, loss: torch.Tensor) -> StepResult:
        """The (scaled) step; queued measurements and periodic evaluation go out as events."""
        grad_norm = update(self, loss, self._scales)
        self._scales = None
        self._step = step + 1
        if batch.after is not None:  # a growth round's last batch: measure its level now
            batch.after()
        samples: list[Sample] = [s for group in self.pending for s in group]
        self.pending.clear()
        if self.fam.eval_every and (step + 1) % self.fam.eval_every == 0:
            samples += class_samples(self._class_errors(), self.baselines)
            samples.append(Sample("ndl_replay_samples_total", (), float(self.replay_total)))
        events: list[Any] = [MetricSamples(step + 1, self._epoch, tuple(samples))] if samples else []
        events += self.pending_events
        self.pending_events = []
        return StepResult(len(batch.x), grad_norm, events)

    @torch.no_grad()
    def _class_errors(self) -> dict[int, float]:
        """Held-out reconstruction MSE of every seen class."""
        self.model.eval()
        return {c: float(per_sample_error(self.model, self.x_test[self.y_test == c]).mean()) for c in self.seen}

    # -- end of epoch: evaluation, thresholds, replay statistics ------------------
    def _level_errors(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-sample error [n] of ``x`` through levels 1..L, for every level L."""
        return [per_sample_error(self.model, x, lv) for lv in range(1, self.model.levels + 1)]

    @torch.no_grad()
    def _fit_stats(self, pool: dict[int, torch.Tensor]) -> None:
        """Fit each class of ``pool`` (class -> images [n, D]) on its codes under the current network.

        Replayed classes are fitted on their drawn codes moved by the stage's
        drift (:func:`transported_codes`, stats_source replay) or on their
        replayed images' new codes as they are (reencode).
        """
        for c, x in pool.items():
            after = self.model.code(x)
            if c in self._pool_codes and self.fam.stats_source == "replay":
                z, before = self._pool_codes[c]
                after = transported_codes(z, before, after)
            self.stats.fit(c, after)
        self._pool_codes = {}

    @torch.no_grad()
    def end_epoch(self, epoch: int, phase: str) -> EpochReport:
        """Evaluate; after the last base epoch or a stage: thresholds/baselines/stats/history."""
        self.model.eval()
        last_base = phase == "base" and epoch == self.fam.base_epochs - 1
        if phase == "incremental":
            self.seen.append(self.current_class)
        errors = self._class_errors()
        if last_base:
            own = {c: self.train.rows([c]) for c in self.base_classes}  # the base classes' last use
            per_level = self._level_errors(torch.cat(list(own.values())))
            self.thresholds.measure(per_level, self.fam.outlier_percentile)
            for c, xc in own.items():
                self.thresholds.measure_class(c, self._level_errors(xc), self.fam.outlier_percentile)
            self.layer_error = [float(e.mean()) for e in per_level]
            self.outlier_frac = [float((e > t).float().mean()) for e, t in zip(per_level, self.thresholds.thresholds)]
            self._fit_stats(own)
            self.baselines.update({c: errors[c] for c in self.base_classes})
            self.train.retire(self.base_classes)
        elif phase == "incremental":
            x_new = self.train.rows([self.current_class])  # learned now: its own images, one last time
            self.thresholds.measure_class(self.current_class, self._level_errors(x_new), self.fam.outlier_percentile)
            if self.fam.stats_source == "data":  # the stored-data variant re-reads every seen class
                pool = {c: self.train.rows([c]) for c in self.seen}
            else:
                pool = {**self._pool, self.current_class: x_new}
            self._fit_stats(pool)
            self.train.retire([self.current_class])
            self.baselines[self.current_class] = errors[self.current_class]
        if last_base or phase == "incremental":
            self.history.append({"stage": self.stage, "learned": self.current_class,
                                 "errors": {str(c): e for c, e in errors.items()},
                                 "sizes": self.model.sizes(), "added": list(self.stage_added)})
        queued = [s for group in self.pending for s in group]  # measured after the stage's last step
        self.pending.clear()
        samples = queued + class_samples(errors, self.baselines) + stage_samples(self)
        x_probe = self.x_test[torch.isin(self.y_test, torch.tensor(self.seen, device=self.device))]
        layers = tuple(LayerSignal(f"encoder.{i}", "activation_abs_mean", h.abs().mean(0).cpu().numpy())
                       for i, h in enumerate(self.model.encode(x_probe)))
        metrics = {"val_loss": float(np.mean(list(errors.values()))), "stage": float(self.stage),
                   "base_class_error": float(np.mean([errors[c] for c in self.base_classes])),
                   "replay_samples": float(self.replay_total),
                   **{f"units_encoder_{i}": float(n) for i, n in enumerate(self.model.sizes())}}
        if phase == "incremental":
            metrics["newest_class_error"] = errors[self.current_class]
            earlier = [errors[c] - self.baselines[c] for c in self.seen[:-1]]
            metrics["mean_forgetting"] = float(np.mean(earlier)) if earlier else 0.0
        return EpochReport(metrics, [MetricSamples(self._step, epoch, tuple(samples))], layers=layers)

    # -- bookkeeping ---------------------------------------------------------------
    def parameter_count(self) -> int:
        """All autoencoder parameters (grows with neurogenesis)."""
        return sum(p.numel() for p in self.model.parameters())

    @property
    def lr(self) -> float:
        """The main learning rate: the configured one times any rollback/drill scaling."""
        return float(self.cfg.train.lr) * self.lr_scale

    def learning_rate(self) -> float:
        """The main learning rate (phases scale it per level)."""
        return self.lr

    def scale_learning_rate(self, factor: float) -> None:
        """Scale the main rate; every phase's level rates derive from it at each step."""
        self.lr_scale *= factor

    def manifest(self) -> dict[str, Any]:
        """The data that went in (with its checksum), split sizes and class order."""
        return {**self.images.manifest(), "train_samples": len(self.train),
                "heldout_samples": int(len(self.y_test)), "base_classes": self.base_classes,
                "class_order": self.order, "variant": self.variant}

    def write_artifacts(self, directory: Any) -> None:
        """Forgetting matrix, growth, thresholds, image grids and error curves."""
        write_all(self, directory)

    def state_dict(self) -> dict[str, Any]:
        """Everything to continue exactly: architecture, weights, optimizer, mechanisms, generator."""
        return {"sizes": self.model.sizes(), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.gen.get_state(),
                "thresholds": self.thresholds.state_dict(), "stats": self.stats.state_dict(),
                "stage": self.stage, "current_class": self.current_class, "seen": list(self.seen),
                "stage_added": list(self.stage_added), "total_added": list(self.total_added),
                "layer_error": list(self.layer_error), "outlier_frac": list(self.outlier_frac),
                "baselines": dict(self.baselines), "history": list(self.history),
                "replay_total": self.replay_total, "lr_scale": self.lr_scale, "data": self.train.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the model at the checkpoint's (grown) sizes, then restore everything."""
        self._build([int(s) for s in state["sizes"]])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"])
        self.thresholds.load_state_dict(state["thresholds"])
        self.stats.load_state_dict(state["stats"])
        self.stage, self.current_class = int(state["stage"]), int(state["current_class"])
        self.seen = [int(c) for c in state["seen"]]
        self.stage_added, self.total_added = list(state["stage_added"]), list(state["total_added"])
        self.layer_error, self.outlier_frac = list(state["layer_error"]), list(state["outlier_frac"])
        self.baselines = {int(c): float(v) for c, v in state["baselines"].items()}
        self.history = list(state["history"])
        self.replay_total = int(state["replay_total"])
        self.lr_scale = float(state.get("lr_scale", 1.0))
        # Checkpoints from before the guard: every class seen at a completed epoch is learned.
        self.train.load_state_dict(state.get("data", {"retired": self.seen if self.thresholds.ready else []}))

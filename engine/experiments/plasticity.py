"""The ``plasticity`` family: loss of plasticity over long task streams.

One phase ``stream`` of ``n_tasks`` epochs; an epoch is one task, one pass
over its training data. A plain ReLU MLP learns online (each batch is scored
before its update: online loss/accuracy); a replacement mechanism (continual
backprop or ReDo, :mod:`engine.mechanisms.replacement`) may re-initialise
units through :func:`engine.surgery.apply_plan`; L2 (``weight_decay``) and
shrink-and-perturb (``shrink``/``perturb``) are baselines on the same loop.
Every ``diagnostics_every`` steps the probe diagnostics go out as catalog
samples; at each task end the task's held-out split gives ``val_loss`` (and
``val_accuracy`` for classification) and per-unit signals go to the layers.
Replacements are reported as :class:`StructuralChange` events (kind
``replace``), summed per layer over a task and returned with the task's last
step: at most one per layer per task, whatever the replacement rate.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from engine.config import RunConfig
from engine.data.images import load_images
from engine.data.streams import ClassIncrementalImages, PermutedImages, SlowRegression
from engine.experiments._plasticity_artifacts import write_plasticity_artifacts
from engine.experiments._plasticity_config import TRAIN_DEFAULTS, PlasticityConfig
from engine.experiments._plasticity_diag import ROW_KEYS, ProbeDiagnostics
from engine.experiments._plasticity_step import ReplacementLedger, Stepper
from engine.experiments.base import EpochReport, StepResult, scale_optimizer_lr
from engine.diagnostics.rank import redo_scores
from engine.errors import ConfigError, ParameterError
from engine.mechanisms.replacement import get_mechanism
from engine.models.mlp import MLP
from engine.parallel import data_parallel, global_mean, global_rows
from engine.registry import register_experiment
from engine.surgery import apply_plan
from engine.telemetry.events import LayerSignal, MetricSamples, Sample

__all__ = ["PlasticityConfig", "PlasticityExperiment"]


@register_experiment("plasticity", PlasticityConfig,
                     "Loss of plasticity on task streams: continual backprop, ReDo, rank/dormancy diagnostics",
                     train_defaults=TRAIN_DEFAULTS)
class PlasticityExperiment:
    """Stream, learner, optimizer, mechanism and diagnostics of one plasticity run."""

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        fam: PlasticityConfig = cfg.family
        self.cfg, self.fam, self.device = cfg, fam, device
        seed = cfg.train.seed
        torch.manual_seed(seed)
        self.gen = torch.Generator().manual_seed(seed)  # init, replacements, perturbation noise
        self._images_manifest: dict[str, Any] | None = None
        self.stream: PermutedImages | SlowRegression
        if fam.stream == "permuted_images":
            images = load_images(fam.data, seed)
            self._images_manifest = images.manifest()
            self.stream = PermutedImages(images, seed + 1, fam.heldout_frac, device)
        elif fam.stream == "class_incremental":
            images = load_images(fam.data, seed)
            self._images_manifest = images.manifest()
            try:
                self.stream = ClassIncrementalImages(images, seed + 1, fam.heldout_frac, device, fam.initial_classes,
                                                     fam.classes_per_increment, fam.tasks_per_increment)
            except ParameterError as exc:  # class counts depend on the data set: bad input, exit 2
                raise ConfigError(exc.key, exc.value, exc.allowed) from None
        else:
            self.stream = SlowRegression(seed + 1, fam.n_bits, fam.slow_bits, fam.task_samples,
                                         max(1, round(fam.heldout_frac * fam.task_samples)),
                                         fam.target_units, fam.target_beta, device)
        self.classification = self.stream.kind == "classification"
        self.model = MLP(self.stream.in_dim, fam.hidden_units, fam.hidden_layers, self.stream.out_dim,
                         fam.unit_init, self.gen).to(device)
        tc = cfg.train
        params = list(self.model.parameters())
        self.optimizer: torch.optim.Optimizer = (
            torch.optim.Adam(params, lr=tc.lr, weight_decay=fam.weight_decay) if tc.optimizer == "adam"
            else torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=fam.weight_decay))
        self.loss_fn: nn.Module = nn.CrossEntropyLoss() if self.classification else nn.MSELoss()
        pairs = self.model.hidden_pairs()
        self.mech: Any = None
        if fam.mechanism == "cbp":
            self.mech = get_mechanism("cbp")(self.model, pairs, fam.replacement_rate, fam.maturity_threshold,
                                             fam.utility_decay, fam.utility, fam.unit_init)
        elif fam.mechanism == "redo":
            self.mech = get_mechanism("redo")(self.model, pairs, fam.redo_tau, fam.redo_every, fam.unit_init)
        self.diag = ProbeDiagnostics(fam.hidden_layers, fam.redo_tau)
        self._weights = [lin.weight for lin in self.model.layers]
        self._params = params
        self._stepper = Stepper(self.model, self.optimizer, self.classification)
        self.ledger = ReplacementLedger(fam.mechanism)
        self._batches_left = 0  # of the current task; its last step returns the task's StructuralChange events
        self.probe_n = min(fam.probe_size, self._stream_size())
        self.tasks: list[dict[str, Any]] = []
        self.epoch = self.step = 0
        self._new_task = False
        self._reset_online()

    def _stream_size(self) -> int:
        if isinstance(self.stream, PermutedImages):  # class-incremental too: the probe shows every class
            return len(self.stream._x_all)
        return 4096

    def _reset_online(self) -> None:
        # On the model's device, so accumulating needs no per-step host sync.
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)  # summed per-sample online loss
        self._correct = torch.zeros((), dtype=torch.long, device=self.device)
        self._seen = 0

    # -- schedule and data ---------------------------------------------------------
    def phases(self) -> list[tuple[str, int]]:
        """One phase: the stream of tasks."""
        return [("stream", self.fam.n_tasks)]

    def batches(self, epoch: int, phase: str) -> Iterator[tuple[Tensor, Tensor]]:
        """Start the next task and pass once over its training data."""
        self.epoch = epoch
        self.stream.begin_task()
        self._reset_online()
        self._new_task = True
        self._batches_left = math.ceil(self.stream.train_size / self.cfg.train.batch_size)
        return self.stream.batches(self.cfg.train.batch_size)

    # -- training --------------------------------------------------------------------
    def _probe_hidden(self) -> list[Tensor]:
        with torch.no_grad():
            _, acts = self.model(self.stream.probe(min(self.fam.redo_batch, self.probe_n)), hidden=True)
        return acts

    def compute_loss(self, batch: tuple[Tensor, Tensor], step: int) -> Tensor:
        """Score the batch before its update (online); the stepper keeps the outputs for :meth:`apply_update`.

        With plain SGD the loss carries no autograd graph: :meth:`apply_update`
        computes the same gradients itself (:class:`Stepper`).
        """
        x, y = batch
        return self._stepper.loss(x, y)

    def apply_update(self, batch: tuple[Tensor, Tensor], step: int, loss: Tensor) -> StepResult:
        """Update, then let the mechanism replace units; online metrics and diagnostics."""
        _, y = batch
        out, hidden, norms = self._stepper.update(loss)  # out [b, classes or 1]; hidden [b, units] per layer;
        # norms: per parameter, w0, b0, w1, b1, ..., head
        if data_parallel():  # online figures and CBP utilities over the global batch [B, ...], as in one process
            y, out, loss, hidden = global_rows(y), global_rows(out), global_mean(loss), [global_rows(h) for h in hidden]
        self.diag.add_grad_norms(torch.stack(norms[0:2 * len(self._weights):2]))  # hidden weights
        grad_norm = float(torch.linalg.vector_norm(torch.stack(norms)))
        if self.fam.shrink > 0:
            self._shrink_and_perturb()
        if self.mech is not None:
            self.mech.observe(step, hidden)
            for plan in self.mech.plans(step, self._probe_hidden):
                apply_plan(self.model, self.optimizer, plan, self.gen)
                self.ledger.add(plan)
        with torch.no_grad():
            self._loss_sum += loss.detach().double() * len(y)
            if self.classification:
                self._correct += (out.argmax(1) == y).sum()
        self._seen += len(y)
        self.step = step + 1
        events: list[Any] = []
        if self._new_task:  # the gauge shows the task being learned
            self._new_task = False
            events.append(MetricSamples(self.step, self.epoch, (Sample("stream_task", (), float(self.stream.task)),)))
        if self.step % self.fam.diagnostics_every == 0:
            events.append(self._diagnostics())
        self._batches_left -= 1
        if self._batches_left == 0:  # the task's last step: its replacements, one event per layer
            events += self.ledger.flush(self.epoch)
        return StepResult(len(y), grad_norm, events)

    @torch.no_grad()
    def _shrink_and_perturb(self) -> None:
        torch._foreach_mul_(self._params, 1.0 - self.fam.shrink)
        if self.fam.perturb > 0:
            for p in self._params:
                p.add_(torch.randn(p.shape, generator=self.gen).to(p.device), alpha=self.fam.perturb)

    def _replaced(self) -> list[int]:
        return list(self.mech.replaced_total) if self.mech is not None else [0] * self.fam.hidden_layers

    def _diagnostics(self) -> MetricSamples:
        return self.diag.measure(self.step, self.epoch, self.stream.task, self.model,
                                 self.stream.probe(self.probe_n), self._replaced())

    # -- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def end_epoch(self, epoch: int, phase: str) -> EpochReport:
        """Held-out metrics of the task just learned, online metrics, per-unit signals."""
        xh, yh = self.stream.heldout()
        out = self.model(xh)
        metrics = {"val_loss": float(self.loss_fn(out, yh)), "stream_task": float(self.stream.task)}
        if isinstance(self.stream, ClassIncrementalImages):  # history only (no catalog gauges yet)
            newest = torch.isin(yh, self.stream.newest_classes().to(yh.device))  # [n] bool
            metrics.update(stream_classes=float(self.stream.seen), stream_cycle=float(self.stream.cycle),
                           val_new_class_accuracy=float((out.argmax(1) == yh)[newest].float().mean()))
        n = max(self._seen, 1)
        online_loss = float(self._loss_sum) / n
        metrics["online_loss"] = online_loss
        samples = [Sample("online_loss", (), online_loss)]
        online_acc = None
        if self.classification:
            metrics["val_accuracy"] = float((out.argmax(1) == yh).float().mean())
            online_acc = float(self._correct) / n
            metrics["online_accuracy"] = online_acc
            samples.append(Sample("online_accuracy_ratio", (), online_acc))
        self.tasks.append({"task": self.stream.task, "step": self.step, "online_loss": online_loss,
                           "online_accuracy": online_acc, "val_loss": metrics["val_loss"],
                           "val_accuracy": metrics.get("val_accuracy"), "units_replaced": sum(self._replaced())})
        events = [MetricSamples(self.step, epoch, tuple(samples))]
        return EpochReport(metrics, events, layers=self._layer_signals())

    def _unit_signals(self) -> dict[str, list[np.ndarray]]:
        _, acts = self.model(self.stream.probe(self.probe_n), hidden=True)
        out = {"activation_abs_mean": [h.abs().mean(0).cpu().numpy() for h in acts],
               "redo_score": [redo_scores(h).cpu().numpy() for h in acts]}
        if self.mech is not None and hasattr(self.mech, "util"):
            out.update(self.mech.unit_signals())
        return out

    def _layer_signals(self) -> tuple[LayerSignal, ...]:
        return tuple(LayerSignal(f"layers.{i}", name, v)
                     for name, per_layer in self._unit_signals().items() for i, v in enumerate(per_layer))

    # -- bookkeeping -------------------------------------------------------------------
    def parameter_count(self) -> int:
        """Model parameters (constant: replacement re-initialises in place)."""
        return sum(p.numel() for p in self.model.parameters())

    def quality_metric(self, phase: str) -> str:
        """``online_loss``: the figure structural-change accounting compares around replacements.

        Replacements happen during a task's steps and the online loss (each
        batch scored before its update, averaged over the task) sees the steps
        right after them. The held-out ``val_loss`` of a task just learned in
        one pass swings by several times from task to task (healthy CBP,
        minibatch 8: 95th percentile of the task-to-task change +730%), so it
        cannot tell harm from noise: forcing 30% of the most useful units of
        every layer to be replaced mid-task raised the online loss above its
        healthy 95th percentile (+23-27%) in 16 of 18 such tasks, the held-out
        loss in none (README, loss-of-plasticity section).
        """
        return "online_loss"

    def learning_rate(self) -> float:
        """The optimizer's learning rate."""
        return float(self.optimizer.param_groups[0]["lr"])

    def scale_learning_rate(self, factor: float) -> None:
        """Scale the optimizer's learning rate (saved with its state)."""
        scale_optimizer_lr(self.optimizer, factor)

    def manifest(self) -> dict[str, Any]:
        """The stream's data: the image set (with checksum) or the regression target's hash."""
        fam = self.fam
        if isinstance(self.stream, ClassIncrementalImages):
            s_ci = self.stream
            return {"stream": fam.stream, "tasks": fam.n_tasks, "train_images": len(s_ci._y_train),
                    "initial_classes": s_ci.initial, "classes_per_increment": s_ci.per_increment,
                    "tasks_per_increment": s_ci.tasks_per_increment, "tasks_per_cycle": s_ci.tasks_per_cycle,
                    "probe_samples": self.probe_n, **(self._images_manifest or {})}
        if self._images_manifest is not None:
            return {"stream": fam.stream, "tasks": fam.n_tasks, "train_per_task": self.stream.train_size,
                    "probe_samples": self.probe_n, **self._images_manifest}
        s = self.stream
        assert isinstance(s, SlowRegression)
        blob = torch.cat([s.w_target.flatten(), s.theta, s.v_target]).cpu().numpy().tobytes()
        return {"stream": fam.stream, "tasks": fam.n_tasks, "n_bits": fam.n_bits, "slow_bits": fam.slow_bits,
                "task_samples": fam.task_samples, "target_units": fam.target_units,
                "target_beta": fam.target_beta, "probe_samples": self.probe_n,
                "sha256": hashlib.sha256(blob).hexdigest()}

    @torch.no_grad()
    def write_artifacts(self, directory: Path) -> None:
        """tasks.csv, diagnostics.csv, units.npz (per-unit signals now) and curves.png."""
        units = {f"layers.{i}/{name}": np.asarray(v)
                 for name, per_layer in self._unit_signals().items() for i, v in enumerate(per_layer)}
        write_plasticity_artifacts(directory, self.tasks, self.diag.rows, ROW_KEYS, units)

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, mechanism, stream, generator, diagnostics and the task history."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.gen.get_state(), "stream": self.stream.state_dict(),
                "mechanism": None if self.mech is None else self.mech.state_dict(),
                "diagnostics": self.diag.state_dict(), "tasks": [dict(t) for t in self.tasks],
                "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.optimizer.defaults["lr"] = self.optimizer.param_groups[0]["lr"]  # a rollback's scale, if any
        self.gen.set_state(state["generator"])
        self.stream.load_state_dict(state["stream"])
        if self.mech is not None:
            self.mech.load_state_dict(state["mechanism"])
        self.diag.load_state_dict(state["diagnostics"])
        self.tasks = [dict(t) for t in state["tasks"]]
        self.step = int(state["step"])

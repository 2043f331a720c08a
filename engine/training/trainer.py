"""The generic training loop: epochs, steps, checkpoints, and event publishing.

The trainer knows nothing about sinks: it publishes events on the bus it is
given. Each step is split in two calls to the experiment: ``compute_loss``
(forward only) and ``apply_update`` (backward, optimizer step, mechanisms).
The loss is checked in between, so no family ever steps on a non-finite
loss and every family stops the same way: status ``diverged``, or with
``on_diverge: rollback`` a return to the last good checkpoint at a lower
learning rate. Fault drills are injected here too, for every family, and
every structural change an experiment returns is accounted here: the
family's quality figure before it and after its settle window
(:mod:`engine.training.impact`), published as a ``StructuralImpact``.
:meth:`Trainer.request_stop` (from a signal handler) ends the run with
status ``interrupted`` after the current step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from engine.experiments.base import Experiment
from engine.fsutil import atomic_write_text
from engine.telemetry.bus import EventBus
from engine.telemetry.events import (EpochCompleted, LossExplosion, NonFiniteLoss, Rollback, RunEnded,
                                     RunStarted, SeedTransition, StepCompleted, StructuralChange,
                                     StructuralImpact)
from engine.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, set_rng_state
from engine.training.divergence import ExplosionWatch
from engine.training.faults import FaultDrills
from engine.training.impact import ImpactLedger
from engine.training.memory import device_memory
from engine.training.parallel import SingleProcess, StepPolicy

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """How a run ended and its final metrics."""

    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


class Trainer:
    """Runs an :class:`Experiment` epoch by epoch and publishes what happens.

    ``rebuild`` makes a fresh experiment of the same config; a rollback loads
    the checkpoint into one (structure may have changed since the checkpoint:
    grown layers, germinated seeds), falling back to the current experiment.
    """

    def __init__(self, experiment: Experiment, bus: EventBus, run_id: str, run_dir: Path,
                 config: dict[str, Any], checkpoint_every: int = 1, config_hash: str = "",
                 rebuild: Callable[[], Experiment] | None = None, parallel: StepPolicy | None = None) -> None:
        self.exp, self.bus, self.run_id, self.run_dir = experiment, bus, run_id, Path(run_dir)
        self.config_hash = config_hash or run_id
        self.config, self.checkpoint_every, self.rebuild = config, checkpoint_every, rebuild
        self.parallel = parallel or SingleProcess()  # data-parallel runs: engine.distributed
        train = dict(config.get("train") or {})
        self.faults = FaultDrills.from_config(train)
        self.watch = ExplosionWatch(float(train.get("explode_factor", 5.0)), int(train.get("explode_patience", 1)))
        self.impact = ImpactLedger(int(train.get("impact_settle", 2)), float(train.get("impact_tolerance", 0.02)))
        self.impact_streak = int(train.get("impact_streak", 3))
        self.impact_net_limit = float(train.get("impact_net_limit", 0.05))
        self._net_hurt = False  # logged once per process
        self.rollback_enabled = train.get("on_diverge", "stop") == "rollback"
        self.max_rollbacks = int(train.get("max_rollbacks", 3))
        self.rollback_lr_factor = float(train.get("rollback_lr_factor", 0.5))
        self.schedule = [name for name, n in experiment.phases() for _ in range(n)]
        self.epoch = 0  # next epoch to run
        self.step = 0
        self.best_acc = 0.0
        self.germinations = 0
        self.rollbacks = 0  # survive rollbacks (not restored by them), saved for resume
        self.nonfinite_steps = 0
        self.lr_scale = 1.0  # cumulative learning-rate multiplier applied by rollbacks
        self.last: dict[str, float] = {}
        self._stop = False
        self._t_start = time.perf_counter()

    def request_stop(self) -> None:
        """Ask the loop to stop after the current step (safe from signal handlers)."""
        self._stop = True

    # -- state ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Loop position, running bests, divergence watch and rollback bookkeeping."""
        return {"epoch": self.epoch, "step": self.step, "best_acc": self.best_acc,
                "germinations": self.germinations, "last": dict(self.last),
                "watch": self.watch.state_dict(), "rollbacks": self.rollbacks,
                "nonfinite_steps": self.nonfinite_steps, "lr_scale": self.lr_scale,
                "impact": self.impact.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (keys added later default to a fresh run's values)."""
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best_acc, self.germinations = float(state["best_acc"]), int(state["germinations"])
        self.last = dict(state["last"])
        if "watch" in state:
            self.watch.load_state_dict(state["watch"])
        self.rollbacks = int(state.get("rollbacks", 0))
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        self.lr_scale = float(state.get("lr_scale", 1.0))
        if "impact" in state:
            self.impact.load_state_dict(state["impact"])

    def resume(self) -> bool:
        """Load ``run_dir/checkpoint.pt`` if present; True when resumed."""
        payload = load_checkpoint(self.run_dir, self.exp.device)
        if payload is None:
            return False
        self.exp.load_state_dict(payload["experiment"])
        self.load_state_dict(payload["trainer"])
        set_rng_state(payload["rng"])
        log.info("resumed %s at epoch %d, step %d", self.run_dir, self.epoch, self.step)
        return True

    def checkpoint(self) -> None:
        """Write an atomic checkpoint of the whole run."""
        save_checkpoint(self.run_dir, {"trainer": self.state_dict(), "experiment": self.exp.state_dict()})

    # -- loop -------------------------------------------------------------------
    def run(self) -> Outcome:
        """Train to the end of the schedule, or until diverged/interrupted."""
        manifest = getattr(self.exp, "manifest", None)
        if callable(manifest):  # what data went in (source, sizes, checksum)
            atomic_write_text(self.run_dir / "manifest.json", json.dumps(manifest(), indent=2, sort_keys=True))
        self.bus.publish(RunStarted(self.run_id, str(self.config.get("experiment")), self.config,
                                    str(self.run_dir), str(self.exp.device), self.exp.parameter_count(),
                                    len(self.schedule), self.epoch, self.germinations,
                                    tuple(name for name, _ in self.exp.phases()), self.config_hash,
                                    self.step))
        # Threaded sinks (MLflow, TensorBoard) set up on RunStarted: a sink that
        # cannot start fails here, before training (and stops it with strict_sinks).
        self.bus.flush()
        if self.rollback_enabled and not (self.run_dir / CHECKPOINT_NAME).exists():
            self.checkpoint()  # a good state to return to before the first epoch ends
        status = "finished"
        while self.epoch < len(self.schedule):
            status = self._run_epoch(self.epoch, self.schedule[self.epoch])
            if status == "rolled_back":
                continue
            if status != "running":  # diverged or interrupted
                break
            status = "finished"
        if status == "finished":  # changes still settling are judged on the last evaluation
            self._publish(self.impact.flush(self._quality_metric(self.schedule[-1] if self.schedule else "")))
        self._write_artifacts()
        outcome = Outcome(status, self.final_metrics())
        if status == "diverged":
            outcome.error = f"non-finite loss at step {self.step - 1}"  # the failing step's index
        self.bus.flush()  # sink failures on the last events are counted before the end is served
        self.bus.publish(RunEnded(self.run_id, outcome.status, outcome.metrics, outcome.error))
        return outcome

    def _scale_lr(self, factor: float) -> None:
        # Looked up at call time: a rollback may have replaced self.exp.
        self.exp.scale_learning_rate(factor)

    def _run_epoch(self, epoch: int, phase: str) -> str:
        t0 = time.perf_counter()
        loss_sum = grad_sum = 0.0
        n_steps = samples = 0
        for batch in self.exp.batches(epoch, phase):
            index = self.step  # 0-based, like epochs and --fault_nan_step
            self.faults.before_step(index, self._scale_lr)
            batch = self.parallel.shard(batch)
            loss = self.faults.corrupt(index, self.parallel.compute_loss(self.exp, batch, index))
            # The one host sync of the step's loss; with several ranks also their agreed stop request.
            value, stop = self.parallel.loss_value(loss, self._stop)
            self.step += 1
            if not math.isfinite(value):
                # Checked before backward/step: no family ever updates on a non-finite loss.
                self.bus.publish(StepCompleted(self.step, value, False, time.time()))
                return self._non_finite(index, epoch, value)
            res = self.exp.apply_update(batch, index, loss)
            self.watch.first_loss(value)
            self.bus.publish(StepCompleted(self.step, value, True, time.time()))
            self._publish(res.events)
            loss_sum += value
            grad_sum += res.grad_norm
            n_steps += 1
            samples += res.samples
            if stop:
                return "interrupted"
        report = self.exp.end_epoch(epoch, phase)
        self.epoch = epoch + 1
        duration = time.perf_counter() - t0
        used, limit = device_memory(self.exp.device)
        train_loss = loss_sum / max(n_steps, 1)
        pick = getattr(self.exp, "watched_loss", None)  # optional: the family's choice per phase
        metric = pick(phase) if callable(pick) else "train_loss"
        watched = report.metrics.get(metric, train_loss) if metric != "train_loss" else train_loss
        self.last = {"train_loss": train_loss, "grad_norm": grad_sum / max(n_steps, 1),
                     "learning_rate": self.exp.learning_rate(), **report.metrics,
                     **self.watch.observe(metric, watched),
                     "device_memory_used_bytes": used, "device_memory_limit_bytes": limit}
        if self.watch.erupted:
            log.error("loss is exploding: %.4g, %.1fx its baseline for %d evaluation(s)",
                      watched, self.last["loss_baseline_ratio"], self.watch.count)
            self.bus.publish(LossExplosion(epoch, self.step, watched, self.last["loss_baseline_ratio"],
                                           self.watch.count))
        if "val_accuracy" in report.metrics:  # families without accuracy (autoencoders) report none
            self.best_acc = max(self.best_acc, report.metrics["val_accuracy"])
            self.last["best_val_accuracy"] = self.best_acc
        # Changes the family measured just before making them (e.g. a seed rolled back
        # after this evaluation, reported re-evaluated) close their windows first.
        early = [e for e in report.events if isinstance(e, StructuralChange) and math.isfinite(e.quality_before)]
        self._publish(early)
        metric = self._quality_metric(phase)
        if metric in report.metrics:  # settle windows close on the family's evaluations
            self._publish(self.impact.evaluate(metric, report.metrics[metric],
                                               report.metrics.get("val_accuracy", math.nan)))
        self._publish([e for e in report.events if not any(e is x for x in early)])
        self.bus.publish(EpochCompleted(
            epoch, phase, self.step, dict(self.last), report.seeds, report.layers, report.plateau,
            report.patience, self.epoch / max(len(self.schedule), 1), self.exp.parameter_count(),
            duration, samples / duration if duration > 0 else 0.0))
        if self.checkpoint_every and (self.epoch % self.checkpoint_every == 0 or self.epoch == len(self.schedule)):
            self.checkpoint()
        return "interrupted" if self.parallel.agree_stop(self._stop) else "running"

    def _non_finite(self, index: int, epoch: int, value: float) -> str:
        """Stop (``diverged``) or roll back (``rolled_back``) after a non-finite loss."""
        self.nonfinite_steps += 1
        log.error("non-finite loss %s at step %d (epoch %d): %s", value, index, epoch,
                  "rolling back" if self._can_roll_back() else "stopping")
        if self._can_roll_back():
            self._roll_back(index, epoch, value)
            self.bus.publish(NonFiniteLoss(index, epoch, value))
            return "rolled_back"
        self.bus.publish(NonFiniteLoss(index, epoch, value))
        return "diverged"

    def _can_roll_back(self) -> bool:
        return (self.rollback_enabled and self.rollbacks < self.max_rollbacks
                and (self.run_dir / CHECKPOINT_NAME).exists())

    def _roll_back(self, index: int, epoch: int, value: float) -> None:
        """Load the last good checkpoint, scale the learning rate, publish :class:`Rollback`."""
        payload = load_checkpoint(self.run_dir, self.exp.device)
        assert payload is not None  # _can_roll_back checked the file
        keep = (self.rollbacks + 1, self.nonfinite_steps, self.lr_scale * self.rollback_lr_factor)
        if self.rebuild is not None:  # a fresh experiment: structure added since the checkpoint goes
            self.exp = self.rebuild()
        self.exp.load_state_dict(payload["experiment"])
        self.load_state_dict(payload["trainer"])
        set_rng_state(payload["rng"])
        self.rollbacks, self.nonfinite_steps, target = keep
        self.exp.scale_learning_rate(target / self.lr_scale)  # relative to the checkpoint's scale
        self.lr_scale = target
        log.warning("rollback %d/%d: back to epoch %d (step %d), learning rate x%g from now on",
                    self.rollbacks, self.max_rollbacks, self.epoch, self.step, self.lr_scale)
        self.bus.publish(Rollback(index, epoch, self.step, self.epoch, self.rollbacks, self.max_rollbacks,
                                  self.lr_scale, value))

    def _write_artifacts(self) -> None:
        """Let the experiment write its artifacts (CSV, PNG, JSON) into ``run_dir/artifacts``.

        Called at every end (finished, diverged, interrupted), so partial runs
        keep what they have; a failure here is logged, never fatal.
        """
        write = getattr(self.exp, "write_artifacts", None)
        if not callable(write):
            return
        try:
            (self.run_dir / "artifacts").mkdir(exist_ok=True)
            write(self.run_dir / "artifacts")
        except Exception:  # noqa: BLE001 - artifacts must not cost the run its results
            log.exception("writing artifacts failed")

    def _quality_metric(self, phase: str) -> str:
        pick = getattr(self.exp, "quality_metric", None)  # optional: the family's quality figure
        return pick(phase) if callable(pick) else "val_loss"

    def _publish(self, events: list[Any]) -> None:
        for e in events:
            if isinstance(e, SeedTransition) and e.to_state == "training":
                self.germinations += 1
            elif isinstance(e, StructuralChange):
                e = dataclasses.replace(e, step=self.step)
                self._publish(self.impact.record(e))  # impacts of the windows this change closes
            elif isinstance(e, StructuralImpact):
                if e.harmful:
                    log.warning("harmful structural change: %s", e.describe())
                if e.harmful and e.streak == self.impact_streak:
                    log.error("structural changes keep hurting the model: %d harmful in a row", e.streak)
                if 0 < self.impact_net_limit < e.net and not self._net_hurt:
                    self._net_hurt = True
                    log.error("structural changes keep hurting the model: %+.1f%% net", 100 * e.net)
            self.bus.publish(e)

    def final_metrics(self) -> dict[str, float]:
        """Final numbers for ``metrics.json`` and the sweep summary."""
        out = {k: v for k, v in self.last.items() if not k.startswith("device_memory")}
        if "val_accuracy" in self.last:
            out["best_val_accuracy"] = self.best_acc
        out.update({"epochs": float(self.epoch), "steps": float(self.step),
                    "germinations": float(self.germinations),
                    "parameters": float(self.exp.parameter_count()),
                    "rollbacks": float(self.rollbacks), "nonfinite_steps": float(self.nonfinite_steps),
                    "wall_seconds": time.perf_counter() - self._t_start})
        return out


def pick_device(name: str) -> torch.device:
    """Resolve ``auto``/``cpu``/``cuda``; asking for cuda without one is an error."""
    from engine.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", name, "no CUDA device is available here; use cpu or auto")
    return torch.device(name)

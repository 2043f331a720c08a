"""The generic training loop: epochs, steps, checkpoints, and event publishing.

The trainer knows nothing about sinks: it publishes events on the bus it is
given. It stops cleanly on a non-finite loss (status ``diverged``) or when
:meth:`Trainer.request_stop` is called from a signal handler (status
``interrupted``), always after finishing the current step.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.experiments.base import Experiment
from engine.fsutil import atomic_write_text
from engine.telemetry.bus import EventBus
from engine.telemetry.events import (EpochCompleted, NonFiniteLoss, RunEnded, RunStarted,
                                     SeedTransition, StepCompleted)
from engine.training.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from engine.training.memory import device_memory

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """How a run ended and its final metrics."""

    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


class Trainer:
    """Runs an :class:`Experiment` epoch by epoch and publishes what happens."""

    def __init__(self, experiment: Experiment, bus: EventBus, run_id: str, run_dir: Path,
                 config: dict[str, Any], checkpoint_every: int = 1) -> None:
        self.exp, self.bus, self.run_id, self.run_dir = experiment, bus, run_id, Path(run_dir)
        self.config, self.checkpoint_every = config, checkpoint_every
        self.schedule = [name for name, n in experiment.phases() for _ in range(n)]
        self.epoch = 0  # next epoch to run
        self.step = 0
        self.best_acc = 0.0
        self.germinations = 0
        self.last: dict[str, float] = {}
        self._stop = False
        self._t_start = time.perf_counter()

    def request_stop(self) -> None:
        """Ask the loop to stop after the current step (safe from signal handlers)."""
        self._stop = True

    # -- state ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Loop position and running bests."""
        return {"epoch": self.epoch, "step": self.step, "best_acc": self.best_acc,
                "germinations": self.germinations, "last": dict(self.last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best_acc, self.germinations = float(state["best_acc"]), int(state["germinations"])
        self.last = dict(state["last"])

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
                                    tuple(name for name, _ in self.exp.phases())))
        status = "finished"
        while self.epoch < len(self.schedule):
            status = self._run_epoch(self.epoch, self.schedule[self.epoch])
            if status != "running":  # diverged or interrupted
                break
            status = "finished"
        self._write_artifacts()
        outcome = Outcome(status, self.final_metrics())
        if status == "diverged":
            outcome.error = f"non-finite loss at step {self.step - 1}"  # the failing step's index
        self.bus.publish(RunEnded(self.run_id, outcome.status, outcome.metrics, outcome.error))
        return outcome

    def _run_epoch(self, epoch: int, phase: str) -> str:
        t0 = time.perf_counter()
        loss_sum = grad_sum = 0.0
        n_steps = samples = 0
        for batch in self.exp.batches(epoch, phase):
            index = self.step  # 0-based, like epochs and --fault_nan_step
            res = self.exp.train_step(batch, index)
            self.step += 1
            finite = math.isfinite(res.loss)
            self.bus.publish(StepCompleted(self.step, res.loss, finite, time.time()))
            self._publish(res.events)
            if not finite:
                log.error("non-finite loss %s at step %d (epoch %d): stopping", res.loss, index, epoch)
                self.bus.publish(NonFiniteLoss(index, epoch, res.loss))
                return "diverged"
            loss_sum += res.loss
            grad_sum += res.grad_norm
            n_steps += 1
            samples += res.samples
            if self._stop:
                return "interrupted"
        report = self.exp.end_epoch(epoch, phase)
        self.epoch = epoch + 1
        duration = time.perf_counter() - t0
        used, limit = device_memory(self.exp.device)
        self.last = {"train_loss": loss_sum / max(n_steps, 1), "grad_norm": grad_sum / max(n_steps, 1),
                     "learning_rate": self.exp.learning_rate(), **report.metrics,
                     "device_memory_used_bytes": used, "device_memory_limit_bytes": limit}
        if "val_accuracy" in report.metrics:  # families without accuracy (autoencoders) report none
            self.best_acc = max(self.best_acc, report.metrics["val_accuracy"])
            self.last["best_val_accuracy"] = self.best_acc
        self._publish(report.events)
        self.bus.publish(EpochCompleted(
            epoch, phase, self.step, dict(self.last), report.seeds, report.layers, report.plateau,
            report.patience, self.epoch / max(len(self.schedule), 1), self.exp.parameter_count(),
            duration, samples / duration if duration > 0 else 0.0))
        if self.checkpoint_every and (self.epoch % self.checkpoint_every == 0 or self.epoch == len(self.schedule)):
            self.checkpoint()
        return "interrupted" if self._stop else "running"

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

    def _publish(self, events: list[Any]) -> None:
        for e in events:
            if isinstance(e, SeedTransition) and e.to_state == "training":
                self.germinations += 1
            self.bus.publish(e)

    def final_metrics(self) -> dict[str, float]:
        """Final numbers for ``metrics.json`` and the sweep summary."""
        out = {k: v for k, v in self.last.items() if not k.startswith("device_memory")}
        if "val_accuracy" in self.last:
            out["best_val_accuracy"] = self.best_acc
        out.update({"epochs": float(self.epoch), "steps": float(self.step),
                    "germinations": float(self.germinations),
                    "parameters": float(self.exp.parameter_count()),
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

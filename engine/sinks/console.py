"""Console sink: a Rich live view on a terminal, or one log line per epoch.

Library code never prints: plain mode goes through the ``engine.console``
logger (the CLI decides where logs go); rich mode draws on a Rich console,
the only place allowed to, and repaints at most four times a second from
Rich's own thread, so per-step events cost one counter increment.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from engine.errors import ConfigError
from engine.telemetry import events as ev

log = logging.getLogger("engine.console")

MODES = ("rich", "plain", "auto")
_STATE_STYLE = {"dormant": "dim", "training": "yellow", "blending": "cyan",
                "active": "green", "fossilized": "cyan", "failed": "bold red"}


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt) if math.isfinite(value) else str(value)


def epoch_line(e: ev.EpochCompleted, total: int) -> str:
    """The one-line epoch summary used in plain mode."""
    m = e.metrics
    parts = [f"epoch {e.epoch + 1}/{total} [{e.phase}]"]  # events count from 0, people from 1
    for key, label, fmt in (("train_loss", "train_loss", ".4f"), ("val_loss", "val_loss", ".4f"),
                            ("val_accuracy", "val_acc", ".2%"), ("best_val_accuracy", "best", ".2%"),
                            ("grad_norm", "grad", ".3g"), ("learning_rate", "lr", ".2e")):
        if key in m:
            parts.append(f"{label}={_num(m[key], fmt)}")
    parts.append(f"{e.samples_per_second:,.0f} samples/s {e.duration_seconds:.2f}s")
    if e.patience:
        parts.append(f"plateau {e.plateau}/{e.patience}")
    active = [s for s in e.seeds if s.state != "dormant"]
    if active:
        parts.append("seeds " + " ".join(f"{s.seed_id}:{s.state}@{s.alpha:.2f}" for s in active))
    return " ".join(parts)


class ConsoleSink:
    """Human-facing progress: ``mode`` is "rich", "plain" or "auto".

    ``auto`` picks rich when the stream is a terminal. ``stream`` is a text
    file (default ``sys.stderr``) or a ready :class:`rich.console.Console`.
    ``total_epochs_by_phase`` (e.g. ``{"warm_up": 5, "adaptation": 20}``) gives
    one progress bar per phase; without it there is a single epoch bar.
    """

    name = "console"

    def __init__(self, mode: str, total_epochs_by_phase: dict[str, int] | None = None,
                 stream: TextIO | Console | None = None) -> None:
        if mode not in MODES:
            raise ConfigError("console", mode, "one of " + ", ".join(MODES))
        self.console = stream if isinstance(stream, Console) else Console(file=stream or sys.stderr)
        self.mode = "rich" if mode == "rich" or (mode == "auto" and self.console.is_terminal) else "plain"
        self.phases = dict(total_epochs_by_phase or {})
        self.total = sum(self.phases.values())
        self.run_id = ""
        self.steps = 0
        self.last_loss: float | None = None
        # Replaced wholesale, never mutated, so the refresh thread reads a consistent view.
        self.latest: ev.EpochCompleted | None = None
        self.seeds: dict[str, ev.SeedSnapshot] = {}
        self._progress = Progress(TextColumn("{task.description:>10}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(), console=self.console)
        self._tasks: dict[str, Any] = {}
        self._live: Live | None = None

    def handlers(self) -> dict[type, Any]:
        """Event type -> handler (step events only in rich mode, and only counted)."""
        table: dict[type, Any] = {
            ev.RunStarted: self._on_run_started, ev.EpochCompleted: self._on_epoch,
            ev.SeedTransition: self._on_transition, ev.NonFiniteLoss: self._on_nonfinite,
            ev.Rollback: self._on_rollback, ev.LossExplosion: self._on_explosion,
            ev.Milestone: self._on_milestone, ev.Decision: self._on_decision,
            ev.RunEnded: self._on_run_ended,
        }
        if self.mode == "rich":
            table[ev.StepCompleted] = self._on_step
        return table

    def _say(self, level: int, text: str) -> None:
        if self.mode == "rich":
            self.console.print(Text(text, style="red" if level >= logging.WARNING else ""))
        else:
            log.log(level, "%s", text)

    def _on_run_started(self, e: ev.RunStarted) -> None:
        self.run_id = e.run_id
        self.total = self.total or e.total_epochs
        self._say(logging.INFO, f"run {e.run_id} ({e.experiment}) on {e.device}: "
                                f"{e.parameters:,} parameters, {e.total_epochs} epochs")
        if self.mode != "rich":
            return
        done = e.start_epoch  # on resume, fill earlier phases first
        for phase, n in (self.phases or {"epochs": e.total_epochs}).items():
            self._tasks[phase] = self._progress.add_task(phase, total=n, completed=min(done, n))
            done = max(done - n, 0)
        self._live = Live(get_renderable=self._render, console=self.console,
                          refresh_per_second=4, transient=False)
        self._live.start()

    def _on_step(self, e: ev.StepCompleted) -> None:
        self.steps, self.last_loss = e.step, e.loss

    def _on_epoch(self, e: ev.EpochCompleted) -> None:
        self.latest = e
        self.seeds = {**self.seeds, **{s.seed_id: s for s in e.seeds}}
        if self.mode != "rich":
            self._say(logging.INFO, epoch_line(e, self.total))
        elif e.phase in self._tasks:
            self._progress.advance(self._tasks[e.phase])
        elif "epochs" in self._tasks:
            self._progress.update(self._tasks["epochs"], completed=round(e.progress * self.total))

    def _on_transition(self, e: ev.SeedTransition) -> None:
        if e.seed_id in self.seeds:
            seed = dataclasses.replace(self.seeds[e.seed_id], state=e.to_state)
            self.seeds = {**self.seeds, e.seed_id: seed}
        why = f" ({e.reason})" if e.reason else ""
        level = logging.WARNING if e.to_state == "failed" else logging.INFO
        self._say(level, f"epoch {e.epoch + 1}: seed {e.seed_id} on {e.layer} {e.from_state} -> {e.to_state}{why}")

    def _on_nonfinite(self, e: ev.NonFiniteLoss) -> None:
        self._say(logging.WARNING, f"epoch {e.epoch + 1}, step {e.step}: non-finite loss {e.value}")

    def _on_explosion(self, e: ev.LossExplosion) -> None:
        self._say(logging.ERROR, f"epoch {e.epoch + 1}: loss exploding ({e.loss:.4g}, {e.ratio:.1f}x its baseline)")

    def _on_rollback(self, e: ev.Rollback) -> None:
        self._say(logging.WARNING, f"rollback {e.attempt}/{e.max_rollbacks}: back to epoch {e.to_epoch + 1} "
                  f"(step {e.to_step}), learning rate x{e.lr_scale:g}")

    def _on_milestone(self, e: ev.Milestone) -> None:
        detail = f": {e.detail}" if e.detail else ""
        self._say(logging.INFO, f"epoch {e.epoch + 1}, step {e.step}: {e.name.replace('_', ' ')}{detail}")

    def _on_decision(self, e: ev.Decision) -> None:
        # The payload's scalar figures only (round, outcome, losses, ...): its per-unit
        # scores and lists belong in decisions.jsonl, not on a console line.
        figures = [f"{k} {_num(v, '.4g') if isinstance(v, float) else v}" for k, v in e.payload.items()
                   if isinstance(v, (str, int, float, bool))][:8]
        self._say(logging.INFO, f"epoch {e.epoch + 1}, step {e.step}: {e.kind.replace('_', ' ')}"
                  + (f" ({', '.join(figures)})" if figures else ""))

    def _on_run_ended(self, e: ev.RunEnded) -> None:
        finals = " ".join(f"{k}={_num(v)}" for k, v in e.metrics.items())
        err = f" error: {e.error}" if e.error else ""
        self._stop()
        level = logging.INFO if e.status == "finished" else logging.WARNING
        self._say(level, f"run {e.run_id} {e.status} {finals}{err}".rstrip())

    def _render(self) -> Group:
        e = self.latest
        m = e.metrics if e else {}
        metrics = Table(title="metrics", show_header=False, min_width=36)
        rows = [("train loss", _num(m.get("train_loss"))), ("val loss", _num(m.get("val_loss"))),
                ("val accuracy", _num(m.get("val_accuracy"), ".2%")),
                ("best accuracy", _num(m.get("best_val_accuracy"), ".2%")),
                ("samples/s", _num(e.samples_per_second, ",.0f") if e else "-"),
                ("grad norm", _num(m.get("grad_norm"), ".3g")),
                ("lr", _num(m.get("learning_rate"), ".2e")),
                ("plateau", f"{e.plateau}/{e.patience}" if e else "-"),
                ("step", f"{self.steps} (loss {_num(self.last_loss)})")]
        for label, value in rows:
            metrics.add_row(label, value)
        seeds = Table(title="seeds", min_width=40)
        for col in ("seed", "layer", "state", "alpha", "drift"):
            seeds.add_column(col)
        for s in self.seeds.values():
            seeds.add_row(s.seed_id, s.layer, Text(s.state, style=_STATE_STYLE.get(s.state, "")),
                          f"{s.alpha:.2f}", f"{s.drift:.3f}")
        grid = Table.grid(padding=(0, 2))
        grid.add_row(metrics, seeds)
        phase = f" phase {e.phase}, epoch {e.epoch + 1}" if e else ""
        return Group(Text(f"run {self.run_id}{phase}", style="bold"), self._progress, grid)

    def _stop(self) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            live.refresh()  # the final frame shows the last state
            live.stop()

    def close(self) -> None:
        """Stop the live view (idempotent)."""
        self._stop()

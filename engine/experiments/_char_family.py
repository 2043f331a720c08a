"""The experiment-protocol plumbing every char-level LM family shares (apoptosis, heads).

:class:`CharFamily` owns the :class:`CharLM` and :class:`LMWatch` of a run and
implements the schedule (``train`` on corpus A, then ``shift`` on corpus B),
batches, learning-rate hooks and the phase bookkeeping; a family adds its
mechanism in ``apply_update`` / ``end_epoch`` and its own state.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from engine.config import RunConfig
from engine.experiments._char_config import CharLMConfig
from engine.experiments._char_lm import Batch, CharLM
from engine.experiments._lm_watch import LMWatch


class CharFamily:
    """Schedule, data, learning rate and phase bookkeeping of a char-level LM family."""

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        fam: CharLMConfig = cfg.family
        self.cfg, self.device = cfg, device
        self.lm = CharLM(cfg, fam, device)
        self.watch = LMWatch(self.lm, fam.perplexity_jump_limit)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._announced = False  # counters exposed from the first step (and after a resume)
        self._key = "a"  # corpus of the phase being trained

    @property
    def lm_cfg(self) -> CharLMConfig:
        """The family's LM settings."""
        return self.cfg.family

    def phases(self) -> list[tuple[str, int]]:
        """``train`` on corpus A, then ``shift`` on corpus B when ``shift_iters`` > 0."""
        c = self.lm_cfg
        out = [("train", c.max_iters // c.eval_every)]
        if c.shift_iters:
            out.append(("shift", c.shift_iters // c.eval_every))
        return out

    def batches(self, epoch: int, phase: str) -> Iterator[Batch]:
        """``eval_every`` random windows of the phase's corpus."""
        self._key = "a" if phase == "train" else "b"
        return self.lm.batches(phase)

    def _epoch(self) -> int:
        """The epoch the last completed step belongs to."""
        return max(self.step - 1, 0) // self.lm_cfg.eval_every

    def _phase_edges(self, epoch: int, phase: str) -> tuple[bool, bool]:
        """(first, last) evaluation of its phase."""
        c = self.lm_cfg
        first = epoch == 0 or (phase == "shift" and epoch == c.max_iters // c.eval_every)
        return first, self.step in (c.max_iters, c.max_iters + c.shift_iters)

    def _record(self, phase: str, metrics: dict[str, float], shapes: dict[str, int]) -> None:
        """One history row: step, phase, the evaluation's figures and the model's shapes."""
        self.history.append({"step": self.step, "phase": phase, **{k: metrics[k] for k in sorted(metrics)},
                             **shapes})

    def parameter_count(self) -> int:
        """Model parameters (they change with structure)."""
        return self.lm.parameter_count()

    def learning_rate(self) -> float:
        """The optimizer's current (scheduled) rate."""
        return self.lm.learning_rate()

    def scale_learning_rate(self, factor: float) -> None:
        """Scale the schedule's base rate (rollbacks, fault drill)."""
        self.lm.scale_learning_rate(factor)

    def _base_state(self) -> dict[str, Any]:
        return {"lm": self.lm.state_dict(), "watch": self.watch.state_dict(), "step": self.step,
                "history": [dict(h) for h in self.history]}

    def _load_base_state(self, state: dict[str, Any]) -> None:
        self.lm.load_state_dict(state["lm"])
        self.watch.load_state_dict(state["watch"])
        self.step = int(state["step"])
        self.history = [dict(h) for h in state["history"]]
        self._announced = False

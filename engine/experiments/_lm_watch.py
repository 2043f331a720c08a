"""What every char-level LM family measures around its structural changes.

:class:`LMWatch` evaluates the validation loss and perplexity on fixed batches
(plus corpus A's during a domain shift, to show forgetting), compares the
perplexity right after structural events with the one just before them
(``perplexity_jump_*``), takes text samples at phase ends and after
structural events, and reports per-unit mean |output| for the shared layer
metrics. Families call :meth:`structural` when they change the model.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from engine.experiments._char_lm import CharLM
from engine.telemetry.events import LayerSignal, Sample, TextSample

log = logging.getLogger(__name__)


class LMWatch:
    """Evaluation, perplexity-jump watch and text samples of one char-level LM run."""

    def __init__(self, lm: CharLM, jump_limit: float) -> None:
        self.lm, self.jump_limit = lm, jump_limit
        self.jumps = 0
        self.jump_ratio = 1.0
        self.samples: list[dict[str, Any]] = []  # every text sample: step, tag, text
        self._ppl_before: float | None = None  # perplexity at the evaluation before the pending events
        self._pending = False  # structural events since the last evaluation
        self._sample_due = False  # structural events since the last text sample
        self._last_sample_step = -(10**9)

    def structural(self) -> None:
        """The model's structure just changed (its next evaluation is judged against the previous one)."""
        self._pending = self._sample_due = True

    def evaluate(self, key: str, first_of_phase: bool, step: int) -> dict[str, float]:
        """Validation figures of corpus ``key`` (``val_loss_a`` too on corpus B); updates the jump watch."""
        val = self.lm.evaluate(key)
        ppl = math.exp(min(val, 50.0))
        metrics = {"val_loss": val, "val_perplexity": ppl, "tokens_per_second": self.lm.tokens_per_second()}
        if key == "b":  # forgetting of corpus A during the shift
            metrics["val_loss_a"] = self.lm.evaluate("a")
        if first_of_phase:
            self._ppl_before = None  # a new corpus: perplexities of different corpora do not compare
        if self._pending and self._ppl_before is not None:
            self.jump_ratio = ppl / self._ppl_before
            if self.jump_limit > 0 and self.jump_ratio > self.jump_limit:
                self.jumps += 1
                log.warning("validation perplexity jumped %.3gx (%.4g -> %.4g) after structural changes "
                            "before step %d", self.jump_ratio, self._ppl_before, ppl, step)
        self._pending = False
        self._ppl_before = ppl
        return metrics

    def sample(self, step: int, epoch: int, tag: str) -> TextSample:
        """A text sample now (``tag`` e.g. ``phase_end/train``, ``after/head_prune``)."""
        text = self.lm.sample() if self.lm.lm.sample_chars > 0 else ""
        self._sample_due, self._last_sample_step = False, step
        self.samples.append({"step": step, "tag": tag, "text": text})
        return TextSample(step, epoch, tag, text)

    def due_samples(self, step: int, epoch: int, phase: str, last_of_phase: bool) -> list[TextSample]:
        """A sample at a phase end, or after structural events at most every ``sample_every`` steps."""
        if last_of_phase:
            return [self.sample(step, epoch, f"phase_end/{phase}")]
        if self._sample_due and step - self._last_sample_step >= self.lm.lm.sample_every:
            return [self.sample(step, epoch, "after/structural")]
        return []

    def catalog_samples(self, metrics: dict[str, float] | None = None) -> list[Sample]:
        """Text-sample count and jump figures (and perplexity, tokens/s after an evaluation)."""
        out = [Sample("text_samples_total", (), float(len(self.samples))),
               Sample("perplexity_jump_ratio", (), self.jump_ratio),
               Sample("perplexity_jump_limit_ratio", (), self.jump_limit),
               Sample("perplexity_jumps_total", (), float(self.jumps))]
        if metrics is not None:
            out += [Sample("val_perplexity", (), metrics["val_perplexity"]),
                    Sample("tokens_per_second", (), metrics["tokens_per_second"])]
        return out

    @torch.no_grad()
    def layer_signals(self, x: torch.Tensor) -> tuple[LayerSignal, ...]:
        """Mean |output| per unit of every unit group on token ids ``x`` [B, T] (units, dead units, quantiles)."""
        model = self.lm.model
        model.eval()
        model.set_recording(True)
        model(x)
        out = tuple(LayerSignal(u.name, "activation_abs_mean",
                                model.get_submodule(u.name).last_abs.cpu().numpy())
                    for u in model.unit_layers())
        model.set_recording(False)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Counters, the pending-event flags and every sample taken."""
        return {"jumps": self.jumps, "jump_ratio": self.jump_ratio, "ppl_before": self._ppl_before,
                "pending": self._pending, "sample_due": self._sample_due,
                "last_sample_step": self._last_sample_step, "samples": [dict(s) for s in self.samples]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.jumps, self.jump_ratio = int(state["jumps"]), float(state["jump_ratio"])
        self._ppl_before = state["ppl_before"]
        self._pending, self._sample_due = bool(state["pending"]), bool(state["sample_due"])
        self._last_sample_step = int(state["last_sample_step"])
        self.samples = [dict(s) for s in state["samples"]]

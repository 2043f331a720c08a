"""Live probe diagnostics of the plasticity family, as catalog samples.

Every ``every`` steps the family calls :meth:`ProbeDiagnostics.measure`: one
forward pass of the fixed probe set, then per hidden layer the effective,
stable and approximate rank, dead and dormant fractions, mean |weight|, the
weight-gradient norm averaged over the steps since the previous measurement,
and the cumulative replaced units; plus the cumulative seconds spent here.
The per-step cost is one fused norm of the hidden layers' weight gradients.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from engine.diagnostics.rank import layer_stats
from engine.models.mlp import MLP
from engine.telemetry.events import MetricSamples, Sample

#: Columns of one diagnostics row per layer (also the CSV artifact's header).
ROW_KEYS = ("step", "task", "layer", "effective_rank", "stable_rank", "approximate_rank", "dead_ratio",
            "dormant_ratio", "weight_abs_mean", "grad_norm", "units_replaced_total")


class ProbeDiagnostics:
    """Gradient-norm accumulators, timing and the history of measurements."""

    def __init__(self, n_layers: int, tau: float) -> None:
        self.names = [f"layers.{i}" for i in range(n_layers)]
        self.tau = tau
        self.grad_sum = torch.zeros(n_layers)  # [layers] sum of per-step weight-grad norms
        self.grad_steps = 0
        self.seconds = 0.0
        self.rows: list[dict[str, Any]] = []

    def add_grad_norms(self, norms: Tensor) -> None:
        """Accumulate one step's per-layer weight-gradient norms [layers] (no sync)."""
        if self.grad_sum.device != norms.device:  # follows the model (CUDA), once
            self.grad_sum = self.grad_sum.to(norms.device)
        self.grad_sum += norms
        self.grad_steps += 1

    @torch.no_grad()
    def measure(self, step: int, epoch: int, task: int, model: MLP, probe_x: Tensor,
                replaced: list[int]) -> MetricSamples:
        """Measure every hidden layer on ``probe_x`` and return the samples."""
        t0 = time.perf_counter()
        _, acts = model(probe_x, hidden=True)
        grads = (self.grad_sum / max(self.grad_steps, 1)).tolist()
        self.grad_sum.zero_()
        self.grad_steps = 0
        samples: list[Sample] = []
        for i, (name, h) in enumerate(zip(self.names, acts)):
            st = layer_stats(h, self.tau)
            w_abs = float(model.layers[i].weight.abs().mean())
            row = {"step": step, "task": task, "layer": name, "effective_rank": st.effective_rank,
                   "stable_rank": st.stable_rank, "approximate_rank": st.approximate_rank,
                   "dead_ratio": st.dead_ratio, "dormant_ratio": st.dormant_ratio,
                   "weight_abs_mean": w_abs, "grad_norm": grads[i], "units_replaced_total": replaced[i]}
            self.rows.append(row)
            samples += [Sample(f"layer_{k}", (name,), float(row[k])) for k in ROW_KEYS[3:-1]]
            samples.append(Sample("units_replaced_total", (name,), float(replaced[i])))
        self.seconds += time.perf_counter() - t0
        samples.append(Sample("diagnostics_seconds_total", (), self.seconds))
        return MetricSamples(step, epoch, tuple(samples))

    def state_dict(self) -> dict[str, Any]:
        """Accumulators, cumulative seconds and the rows so far."""
        return {"grad_sum": self.grad_sum.clone(), "grad_steps": self.grad_steps,
                "seconds": self.seconds, "rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.grad_sum = state["grad_sum"].clone()
        self.grad_steps = int(state["grad_steps"])
        self.seconds = float(state["seconds"])
        self.rows = [dict(r) for r in state["rows"]]

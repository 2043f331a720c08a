"""A morphogenetic sentinel seed: a child network at a trunk interface.

Lifecycle: dormant -> training -> blending -> active -> fossilized (accepted
and frozen), or -> failed (culled: not converging, or rolled back because it
made the model worse).
The seed's output is always ``y = x + alpha * (child(x) - x)`` (x: [batch, d]).
This single continuous form is why the model's output cannot jump when blending
ends: ``active`` is just ``alpha == 1`` of the same expression. Dormant and
training seeds have ``alpha == 0`` and so no effect at all.

While training, the child learns ``child(x) ~= x`` (an autoencoder) from a
bounded reservoir of *detached* interface activations with its own optimizer,
so no gradient reaches the trunk. State transitions are applied by
:mod:`engine.surgery` from plans; the seed only reports readiness.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from engine.parallel import global_rows
from engine.telemetry.events import SEED_STATES  # plain tuple of names, no sink code


class SentinelSeed(nn.Module):
    """Child network ``Linear(d, 4d) - ReLU - Linear(4d, d)`` with lifecycle state."""

    def __init__(self, seed_id: str, layer: str, dim: int, reservoir_size: int = 512,
                 shadow_lr: float = 1e-3, progress_thresh: float = 0.6, max_train_steps: int = 1500,
                 ae_batch: int = 64) -> None:
        super().__init__()
        self.seed_id, self.layer, self.dim = seed_id, layer, dim
        self.child = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, dim))
        # Reservoir of recent interface activations: [reservoir_size, dim], never larger.
        self.register_buffer("reservoir", torch.zeros(reservoir_size, dim))
        self.register_buffer("res_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("drift_ref", torch.zeros(0, dim))
        self.shadow_lr, self.progress_thresh = shadow_lr, progress_thresh
        self.max_train_steps, self.ae_batch = max_train_steps, ae_batch
        self.state = "dormant"
        self.alpha = 0.0
        self.blend_steps = 0
        self.blend_done = 0
        self.train_steps = 0
        self.initial_loss = math.nan
        self.ema_loss = math.nan
        self.drift = 0.0
        self.health = 0.0
        self.opt: torch.optim.Optimizer | None = None
        for p in self.child.parameters():
            p.requires_grad_(False)

    # -- forward ------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the seed to interface activations ``x: [batch, dim]``."""
        if self.state == "training" and self.training:
            # Data-parallel: the whole global batch's rows, so every rank's reservoir
            # (and so its child and its readiness) is the single-process one.
            self._remember(global_rows(x.detach()))
        if self.alpha == 0.0:
            return x
        return x + self.alpha * (self.child(x) - x)

    def _remember(self, x: torch.Tensor) -> None:
        # Ring buffer: the newest activations overwrite the oldest.
        cap = self.reservoir.shape[0]
        x = x[-cap:]
        start = int(self.res_count) % cap
        idx = (torch.arange(x.shape[0], device=x.device) + start) % cap
        self.reservoir[idx] = x.to(self.reservoir.dtype)
        self.res_count += x.shape[0]

    # -- training as an autoencoder ------------------------------------------
    @property
    def progress(self) -> float:
        """1 - loss / initial loss of the child's reconstruction (0 when unknown)."""
        if not math.isfinite(self.initial_loss) or self.initial_loss <= 0 or not math.isfinite(self.ema_loss):
            return 0.0
        return max(0.0, 1.0 - self.ema_loss / self.initial_loss)

    def train_step(self, generator: torch.Generator) -> str:
        """One autoencoder step on a reservoir minibatch.

        Returns ``"ready"`` (progress reached), ``"failed"`` (non-finite loss or
        no convergence within ``max_train_steps``) or ``"training"``.
        """
        assert self.opt is not None, "germinate() first"
        n = min(int(self.res_count), self.reservoir.shape[0])
        if n == 0:
            return "training"
        idx = torch.randint(0, n, (min(self.ae_batch, n),), generator=generator).to(self.reservoir.device)
        batch = self.reservoir[idx]  # [b, dim], detached by construction
        loss = nn.functional.mse_loss(self.child(batch), batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        value = float(loss.detach())
        self.train_steps += 1
        if not math.isfinite(value):
            return "failed"
        if not math.isfinite(self.initial_loss):
            self.initial_loss = self.ema_loss = value
        self.ema_loss = 0.9 * self.ema_loss + 0.1 * value
        if self.progress >= self.progress_thresh:
            return "ready"
        return "failed" if self.train_steps >= self.max_train_steps else "training"

    # -- transitions (called by engine.surgery) -------------------------------
    def germinate(self) -> None:
        """dormant -> training: the child gets its own optimizer."""
        for p in self.child.parameters():
            p.requires_grad_(True)
        self.opt = torch.optim.Adam(self.child.parameters(), lr=self.shadow_lr)
        self.state = "training"

    def start_blending(self, blend_steps: int, keep_optimizer: bool = False) -> None:
        """training -> blending: alpha ramps 0 -> 1 over ``blend_steps`` steps.

        The child then learns from the task loss: with its own optimizer when
        ``keep_optimizer``, else the main optimizer takes its parameters over.
        """
        if not keep_optimizer:
            self.opt = None
        self.blend_steps, self.blend_done = max(blend_steps, 1), 0
        self.state = "blending"

    def advance_blend(self) -> bool:
        """Advance alpha by one step; True when blending just completed."""
        if self.state != "blending":
            return False
        # alpha from an integer count: exact 1.0 after blend_steps steps, no float drift.
        self.blend_done += 1
        self.alpha = min(1.0, self.blend_done / self.blend_steps)
        if self.alpha >= 1.0:
            self.state = "active"
            return True
        return False

    def fossilize(self) -> None:
        """active -> fossilized: keep the child (alpha 1) but stop training it."""
        self.state, self.opt = "fossilized", None
        for p in self.child.parameters():
            p.requires_grad_(False)

    def cull(self) -> None:
        """-> failed: no effect on the output, parameters frozen."""
        self.state, self.alpha, self.opt = "failed", 0.0, None
        for p in self.child.parameters():
            p.requires_grad_(False)

    # -- diagnostics ------------------------------------------------------------
    def observe(self, x: torch.Tensor) -> None:
        """Update health and drift from probe activations ``x: [probe, dim]``."""
        self.health = float(x.var(dim=0, unbiased=False).mean())
        if self.state in ("blending", "active", "fossilized"):
            if self.drift_ref.shape[0] != x.shape[0]:
                self.drift_ref = x.detach().clone()
            cos = nn.functional.cosine_similarity(x, self.drift_ref, dim=1, eps=1e-8)
            # Bounded to [0, 1]: cos in [-1, 1] for non-zero rows; zero rows give 0.
            self.drift = float((1.0 - cos.mean()).clamp(0.0, 1.0))

    # -- state ------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        """Lifecycle state, included in ``state_dict`` by torch."""
        return {
            "state": self.state, "alpha": self.alpha, "blend_steps": self.blend_steps, "blend_done": self.blend_done,
            "train_steps": self.train_steps, "initial_loss": self.initial_loss,
            "ema_loss": self.ema_loss, "drift": self.drift, "health": self.health,
            "opt": self.opt.state_dict() if self.opt is not None else None,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore lifecycle state saved by :meth:`get_extra_state`."""
        if state["state"] not in SEED_STATES:
            raise ValueError(f"seed state {state['state']!r} not in {SEED_STATES}")
        grad = state["state"] in ("training", "blending", "active")
        for p in self.child.parameters():
            p.requires_grad_(grad)
        self.opt = None
        if state["opt"] is not None:
            self.opt = torch.optim.Adam(self.child.parameters(), lr=self.shadow_lr)
            self.opt.load_state_dict(state["opt"])
        for key in ("state", "alpha", "blend_steps", "blend_done", "train_steps", "initial_loss", "ema_loss", "drift", "health"):
            setattr(self, key, state[key])

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # drift_ref's shape depends on when blending began; resize before copy.
        ref = state_dict.get(prefix + "drift_ref")
        if ref is not None and ref.shape != self.drift_ref.shape:
            self.drift_ref = torch.zeros_like(ref, device=self.drift_ref.device)
        super()._load_from_state_dict(state_dict, prefix, *args)

"""The ``seeds`` family: morphogenetic seeds on synthetic classification.

Phase ``warm_up`` trains the trunk. Phase ``adaptation`` freezes the trunk;
the germination controller watches validation loss for plateaus and
germinates seeds, whose children then train, blend in and stay active.
"""

from __future__ import annotations

from typing import Any, Iterator, Literal

import logging
import math

import torch
from pydantic import Field, model_validator
from torch import nn

from engine.config import RunConfig, Section
from engine.errors import ConfigError
from engine.data.synthetic import DataConfig, make_problem
from engine.experiments.base import EpochReport, StepResult, scale_optimizer_lr
from engine.mechanisms.germination import GerminationController
from engine.mechanisms.plans import AddParameters
from engine.mechanisms.seed_guard import SeedGuard
from engine.mechanisms.seed_plans import BlendSeed, CullSeed, FossilizeSeed
from engine.models.seed import SentinelSeed
from engine.models.trunk import SeededMLP
from engine.registry import register_experiment
from engine.surgery import apply_plan
from engine.telemetry.events import LayerSignal, SeedSnapshot, SeedTransition, StructuralChange

log = logging.getLogger(__name__)
PROBE_SIZE = 256  # validation samples used for seed health and drift


class SeedsConfig(Section):
    """Config of the seeds family: data, trunk, seeds, controller and schedule."""

    data: DataConfig = Field(default_factory=DataConfig)
    hidden_dim: int = Field(16, ge=1, le=65536, description="Width of each hidden layer.")
    num_layers: int = Field(2, ge=1, le=64, description="Number of hidden layers.")
    seeds_per_layer: int = Field(2, ge=0, le=64, description="Seeds per hidden layer (0: none).")
    warm_up_epochs: int = Field(30, ge=0, le=100000, description="Phase 1 epochs: train the trunk.")
    adaptation_epochs: int = Field(50, ge=0, le=100000, description="Phase 2 epochs: frozen trunk, seeds may germinate.")
    blend_steps: int = Field(30, ge=1, le=10**7, description="Steps over which alpha ramps 0 -> 1.")
    shadow_lr: float = Field(1e-3, gt=0, le=10, description="Learning rate of a seed's own optimizer.")
    progress_thresh: float = Field(0.6, gt=0, le=1, description="Seed reconstruction progress (1 - loss/initial) to start blending.")
    seed_max_steps: int = Field(1500, ge=1, description="Seed training steps before it is culled as not converging.")
    child_optimizer: Literal["main", "own"] = Field(
        "main", description="How a blending/active child learns the task: in the main optimizer "
        "(at child_lr_scale x lr) or with its own Adam at shadow_lr.")
    child_lr_scale: float = Field(1.0, gt=0, le=100, description="Learning rate of children in the "
                                  "main optimizer, as a multiple of lr (child_optimizer main).")
    blend_tolerance: float = Field(0.0, ge=0, le=10, description="A seed is rolled back and culled when "
                                   "val loss at the end of its probation exceeds its pre-blend value by "
                                   "more than this fraction; otherwise it is accepted and fossilized. "
                                   "0: a seed must not make it worse at all (the frozen model's val "
                                   "loss is deterministic: there is no noise to tolerate).")
    blend_abort: float = Field(0.5, ge=0, le=1000, description="A seed is rolled back at once when val loss "
                               "while it blends or is on probation exceeds its pre-blend value by more "
                               "than this fraction.")
    probation_epochs: int = Field(5, ge=0, le=100000, description="After alpha reaches 1, a seed is judged "
                                  "once this many evaluations in a row did not improve its best val loss "
                                  "(it may be rolled back until then); no other seed germinates meanwhile.")
    reservoir_size: int = Field(512, ge=8, le=10**6, description="Max interface activations a seed keeps.")
    acc_threshold: float = Field(0.95, gt=0, le=1, description="Germinate only while val accuracy is below this.")
    patience: int = Field(5, ge=1, description="Plateau epochs before germination.")
    delta: float = Field(1e-3, ge=0, description="Min val-loss improvement that resets the plateau.")
    fault_reset_epoch: int = Field(
        -1, ge=-1, description="Fault drill: re-initialise the output head just before this epoch's "
        "evaluation, so accuracy collapses (tests accuracy-drop alerts; -1 off).")

    @model_validator(mode="after")
    def _seeds_fit_layers(self) -> "SeedsConfig":
        if self.seeds_per_layer > self.hidden_dim:  # each seed owns >= 1 hidden unit
            raise ConfigError("seeds_per_layer", self.seeds_per_layer,
                              f"must be <= hidden_dim ({self.hidden_dim})")
        return self


@register_experiment("seeds", SeedsConfig, "Morphogenetic seeds with soft-landing blending")
class SeedsExperiment:
    """Model, optimizer, data and mechanisms of one seeds run."""

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        fam: SeedsConfig = cfg.family
        self.cfg, self.fam, self.device = cfg, fam, device
        torch.manual_seed(cfg.train.seed)
        self.gen = torch.Generator().manual_seed(cfg.train.seed)
        split = make_problem(fam.data, cfg.train.seed)
        to = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
        self.x_train, self.y_train = to(split.x_train), to(split.y_train)
        self.x_val, self.y_val = to(split.x_val), to(split.y_val)
        self.n_classes = split.n_classes
        self.model = SeededMLP(split.input_dim, fam.hidden_dim, fam.num_layers, split.n_classes,
                               fam.seeds_per_layer, reservoir_size=fam.reservoir_size,
                               shadow_lr=fam.shadow_lr, progress_thresh=fam.progress_thresh,
                               max_train_steps=fam.seed_max_steps).to(device)
        params = self.model.trunk_parameters()
        tc = cfg.train
        self.optimizer: torch.optim.Optimizer = (
            torch.optim.Adam(params, lr=tc.lr) if tc.optimizer == "adam"
            else torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum))
        self.controller = GerminationController(fam.patience, fam.delta, fam.acc_threshold)
        self.guard = SeedGuard(fam.blend_tolerance, fam.probation_epochs, fam.blend_abort)
        self.groups: list[str] = []  # seeds whose children joined the main optimizer, in order
        self.epoch = 0
        self.loss_fn = nn.CrossEntropyLoss()

    # -- schedule and data -----------------------------------------------------
    def phases(self) -> list[tuple[str, int]]:
        """Warm-up then adaptation."""
        return [("warm_up", self.fam.warm_up_epochs), ("adaptation", self.fam.adaptation_epochs)]

    def batches(self, epoch: int, phase: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled mini-batches; the shuffle comes from the saved generator."""
        self.epoch = epoch
        self._set_trunk_frozen(phase != "warm_up")
        perm = torch.randperm(len(self.y_train), generator=self.gen).to(self.device)
        bs = self.cfg.train.batch_size
        for i in range(0, len(perm), bs):
            idx = perm[i:i + bs]
            yield self.x_train[idx], self.y_train[idx]

    def _set_trunk_frozen(self, frozen: bool) -> None:
        for p in self.model.trunk_parameters():
            p.requires_grad_(not frozen)

    def _seeds(self) -> list[SentinelSeed]:
        return list(self.model.seeds.values())  # type: ignore[arg-type]

    # -- training ----------------------------------------------------------------
    def compute_loss(self, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> torch.Tensor:
        """Task loss of the trunk with its blending/active seeds."""
        x, y = batch
        if not self.model.training:  # .train() walks every module: only when switching
            self.model.train()
        return self.loss_fn(self.model(x), y)

    def apply_update(self, batch: tuple[torch.Tensor, torch.Tensor], step: int,
                     loss: torch.Tensor) -> StepResult:
        """Task step on the trunk / blending seeds, then the seeds' own steps."""
        grad_norm = 0.0
        if loss.requires_grad:  # a frozen trunk with no blending seed has nothing to train
            own = [s.opt for s in self._seeds() if s.opt is not None and s.state in ("blending", "active")]
            self.optimizer.zero_grad(set_to_none=True)
            for opt in own:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            grad_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
            self.optimizer.step()
            for opt in own:  # child_optimizer "own": children step with their own Adam
                opt.step()
        events: list[Any] = []
        for s in self._seeds():
            if s.state == "training":
                outcome = s.train_step(self.gen)
                if outcome == "ready":
                    lr = (self.learning_rate() * self.fam.child_lr_scale
                          if self.fam.child_optimizer == "main" else None)
                    events += self._apply(s, BlendSeed(s.seed_id, self.fam.blend_steps,
                                                       "reconstruction converged", lr), "blend_start")
                elif outcome == "failed":
                    events += self._apply(s, CullSeed(s.seed_id, f"no convergence after {s.train_steps} steps"),
                                          "cull")
            elif s.state == "blending" and s.advance_blend():
                self.guard.blended(s.seed_id)
                events += [SeedTransition(s.seed_id, s.layer, "blending", "active", self.epoch, "alpha reached 1"),
                           StructuralChange("blend_end", s.layer, self.epoch, 1, s.seed_id, "alpha reached 1")]
        return StepResult(len(batch[1]), grad_norm, events)

    def _apply(self, seed: SentinelSeed, plan: Any, kind: str, quality: float = math.nan) -> list[Any]:
        """Apply a lifecycle plan through surgery; the transition and structural-change events.

        ``quality`` is the val loss measured just before the change, when known.
        """
        before = seed.state
        apply_plan(self.model, self.optimizer, plan)
        if isinstance(plan, BlendSeed):
            if plan.lr is not None:
                self.groups.append(plan.seed)
            self.guard.start(plan.seed)
            self._observe_seeds(reset_ref=seed)
        elif isinstance(plan, (CullSeed, FossilizeSeed)) and plan.seed in self.groups:
            self.groups.remove(plan.seed)
        return [SeedTransition(seed.seed_id, seed.layer, before, seed.state, self.epoch, plan.reason),
                StructuralChange(kind, seed.layer, self.epoch, 1, seed.seed_id, plan.reason,
                                 quality_before=quality)]

    # -- evaluation and mechanisms --------------------------------------------
    @torch.no_grad()
    def _observe_seeds(self, reset_ref: SentinelSeed | None = None,
                       acts: list[torch.Tensor] | None = None) -> None:
        """Health and drift of every seed from the probe rows of ``acts``
        (computed here when not given; each ``[n, hidden_dim]``, n >= probe)."""
        self.model.eval()
        if reset_ref is not None:
            reset_ref.drift_ref = torch.zeros(0, reset_ref.dim, device=self.device)
        if acts is None:
            acts = self.model.interface_activations(self.x_val[:PROBE_SIZE])
        for i, h in enumerate(acts):
            for s, (a, b) in zip(self.model.layer_seeds(i), self.model.chunks[i]):
                s.observe(h[:PROBE_SIZE, a:b])

    @torch.no_grad()
    def end_epoch(self, epoch: int, phase: str) -> EpochReport:
        """Validation metrics, per-neuron signals, seed diagnostics, germination."""
        if epoch == self.fam.fault_reset_epoch:
            self.model.head.reset_parameters()  # fault drill: a sudden accuracy collapse
        val_loss, val_acc, acts = self._evaluate()
        events: list[Any] = []
        last = epoch == self.fam.warm_up_epochs + self.fam.adaptation_epochs - 1
        verdict = self.guard.observe(val_loss, final=last)
        if isinstance(verdict, CullSeed):  # the seed in flight hurt: back to the model without it
            events += self._apply(self.model.seeds[verdict.seed], verdict, "seed_rollback",  # type: ignore[arg-type]
                                  quality=val_loss)  # judged against the loss that made it roll back
            log.warning("seed %s %s", verdict.seed, verdict.reason)
            val_loss, val_acc, acts = self._evaluate()  # report the model as it now stands
            self.guard.last_loss = val_loss
        elif verdict is not None and self.model.seeds[verdict.seed].state == "active":  # type: ignore[union-attr]
            events += self._apply(self.model.seeds[verdict.seed], verdict, "fossilize")  # type: ignore[arg-type]
        self._observe_seeds(acts=acts)
        layers = tuple(LayerSignal(f"layers.{i}", "activation_abs_mean", h.abs().mean(0).cpu().numpy())
                       for i, h in enumerate(acts))
        if phase == "adaptation":
            dormant = {s.seed_id: s.health for s in self._seeds() if s.state == "dormant"}
            busy = self.guard.busy or any(s.state == "training" for s in self._seeds())
            plan = self.controller.observe(val_loss, val_acc, dormant, busy)
            if plan is not None:
                seed = self.model.seeds[plan.seed]
                apply_plan(self.model, self.optimizer, plan)
                events += [SeedTransition(plan.seed, seed.layer, "dormant", "training", epoch, plan.reason),
                           StructuralChange("germinate", seed.layer, epoch, 1, plan.seed, plan.reason)]
        seeds = tuple(SeedSnapshot(s.seed_id, s.layer, s.state, s.alpha, s.drift, s.health,
                                   s.ema_loss if s.ema_loss == s.ema_loss else 0.0) for s in self._seeds())
        metrics = {"val_loss": val_loss, "val_accuracy": val_acc,
                   "germination_accuracy_threshold": self.fam.acc_threshold}
        return EpochReport(metrics, events, seeds, layers,
                           self.controller.plateau, self.fam.patience)

    def _evaluate(self) -> tuple[float, float, list[torch.Tensor]]:
        """Validation loss, accuracy and the trunk activations ``[n_val, hidden_dim]`` per layer."""
        self.model.eval()
        logits, acts = self.model.forward_with_activations(self.x_val)  # one pass for everything
        val_loss = float(self.loss_fn(logits, self.y_val))
        return val_loss, float((logits.argmax(1) == self.y_val).float().mean()), acts

    # -- bookkeeping ----------------------------------------------------------------
    def parameter_count(self) -> int:
        """All model parameters, seeds included."""
        return sum(p.numel() for p in self.model.parameters())

    def learning_rate(self) -> float:
        """LR of the trunk's param group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def scale_learning_rate(self, factor: float) -> None:
        """Scale the main optimizer's groups and its default (for children that join later)."""
        scale_optimizer_lr(self.optimizer, factor)

    def architecture(self) -> dict[str, Any]:
        """Shapes and seed states."""
        return self.model.architecture()

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer (with seed groups), controller and generator."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "groups": list(self.groups), "controller": self.controller.state_dict(),
                "guard": self.guard.state_dict(),
                "generator": self.gen.get_state(), "architecture": self.architecture()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore; the seeds' optimizer groups are re-added in their original order."""
        if state["architecture"]["layers"] != self.architecture()["layers"]:
            raise ValueError(f"checkpoint architecture {state['architecture']} does not match the config")
        self.model.load_state_dict(state["model"])
        for owner in state["groups"]:
            apply_plan(self.model, self.optimizer, AddParameters(f"seeds.{owner}.child"))
        self.groups = list(state["groups"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.optimizer.defaults["lr"] = self.optimizer.param_groups[0]["lr"]  # a rollback's scale, if any
        self.controller.load_state_dict(state["controller"])
        if "guard" in state:  # checkpoints written before the guard existed have none
            self.guard.load_state_dict(state["guard"])
        self.gen.set_state(state["generator"])

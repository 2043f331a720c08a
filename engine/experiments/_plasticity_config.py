"""Config section of the ``plasticity`` family (loss of plasticity, CBP, ReDo)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from engine.config import Section
from engine.data.images import ImageDataConfig
from engine.errors import ConfigError

MECHANISMS = ("none", "cbp", "redo")


class PlasticityConfig(Section):
    """Stream, learner, replacement mechanism, baselines and diagnostics of one run."""

    data: ImageDataConfig = Field(default_factory=ImageDataConfig)
    stream: Literal["permuted_images", "class_incremental", "slow_regression"] = Field(
        "permuted_images", description="Task stream: permuted-pixel images, class-incremental images "
        "(classes arrive in order, cycles under new permutations) or slowly-changing regression.")
    n_tasks: int = Field(200, ge=1, le=10**6, description="Tasks in the stream (one epoch each).")
    heldout_frac: float = Field(
        0.1, gt=0, lt=1, description="Held-out fraction of the images (val metrics per task); for "
        "slow_regression, held-out samples per task as a fraction of task_samples.")
    hidden_units: int = Field(100, ge=1, le=65536, description="Units per hidden layer of the ReLU learner.")
    hidden_layers: int = Field(3, ge=1, le=64, description="Hidden layers of the ReLU learner.")
    unit_init: Literal["kaiming", "he_uniform", "he_normal", "xavier_uniform"] = Field(
        "he_uniform", description="Distribution of initial and re-initialised incoming weights "
        "(he_uniform: U(+-sqrt(6/fan_in)), as in continual backprop).")
    mechanism: Literal["none", "cbp", "redo"] = Field(
        "cbp", description="Unit replacement: none (plain backprop), cbp (continual backprop) or redo.")
    replacement_rate: float = Field(8e-4, ge=0, le=1, description="CBP: units replaced per mature unit per step (rho).")
    maturity_threshold: int = Field(100, ge=0, le=10**9, description="CBP: steps a unit must age before it may be replaced.")
    utility_decay: float = Field(0.99, gt=0, lt=1, description="CBP: decay rate eta of utility and mean activation.")
    utility: Literal["contribution", "adaptable_contribution"] = Field(
        "contribution", description="CBP utility: contribution, or adaptable_contribution (deviation from the "
        "mean activation, divided by the input-weight magnitude).")
    redo_tau: float = Field(0.1, ge=0, le=10, description="ReDo / diagnostics: dormant if score <= tau.")
    redo_every: int = Field(1000, ge=1, le=10**9, description="ReDo: steps between re-initialisations (F).")
    redo_batch: int = Field(256, ge=1, le=10**6, description="ReDo: probe samples the scores are computed on.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="L2 baseline: optimizer weight decay.")
    shrink: float = Field(0.0, ge=0, lt=1, description="Shrink-and-perturb: w <- (1-shrink) w + perturb*noise each step.")
    perturb: float = Field(0.0, ge=0, le=1, description="Shrink-and-perturb: std of the Gaussian noise added each step.")
    probe_size: int = Field(2000, ge=1, le=10**6, description="Fixed probe samples for diagnostics (capped at the stream's).")
    diagnostics_every: int = Field(500, ge=1, le=10**9, description="Steps between probe diagnostics (rank, dead, dormant).")
    initial_classes: int = Field(2, ge=1, le=1000, description="class_incremental: classes of a cycle's first tasks.")
    classes_per_increment: int = Field(1, ge=1, le=1000, description="class_incremental: classes added per increment.")
    tasks_per_increment: int = Field(
        2, ge=1, le=10**6, description="class_incremental: tasks (passes over the seen classes) per class set.")
    n_bits: int = Field(20, ge=2, le=64, description="slow_regression: input bits.")
    slow_bits: int = Field(15, ge=1, le=63, description="slow_regression: slowly-changing bits (one flips per task).")
    task_samples: int = Field(10000, ge=1, le=10**8, description="slow_regression: samples per task (the flip period T).")
    target_units: int = Field(100, ge=1, le=100000, description="slow_regression: LTUs of the target network.")
    target_beta: float = Field(0.7, gt=0, le=1, description="slow_regression: LTU threshold parameter beta.")

    @model_validator(mode="after")
    def _consistent(self) -> "PlasticityConfig":
        if self.slow_bits >= self.n_bits:
            raise ConfigError("slow_bits", self.slow_bits, f"must be < n_bits ({self.n_bits})")
        if self.stream == "slow_regression" and self.probe_size > 4096:
            raise ConfigError("probe_size", self.probe_size, "at most 4096 for slow_regression")
        if self.stream == "slow_regression" and round(self.heldout_frac * self.task_samples) < 1:
            raise ConfigError("heldout_frac", self.heldout_frac,
                              f"a fraction giving >= 1 held-out sample of task_samples ({self.task_samples})")
        if self.perturb > 0 and self.shrink == 0:
            raise ConfigError("shrink", self.shrink, "> 0 when perturb is set (shrink-and-perturb needs both; "
                              "noise alone would grow the weights without bound)")
        return self


#: The family's defaults for the shared ``train`` section (flags still win).
#: Structural-change accounting compares the online loss of consecutive tasks,
#: which is noisy: in healthy CBP/ReDo runs 14-23% of task pairs worsen by
#: more than 10% (README, loss-of-plasticity section), so a replacement is
#: harmful only beyond 30%. The net change is off (impact_net_limit 0): over
#: windows that tile the stream it is just the drift of the online loss from
#: the first task, which PlasticityLoss watches.
TRAIN_DEFAULTS = {"optimizer": "sgd", "lr": 0.1, "batch_size": 8, "momentum": 0.0,
                  "impact_tolerance": 0.3, "impact_net_limit": 0.0}

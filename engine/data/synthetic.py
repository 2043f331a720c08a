"""Synthetic classification problems (spirals, moons, clusters, spheres, complex moons).

Every generator is deterministic given the seed, returns standardised float32
features ``x: [n, input_dim]`` and int64 labels ``y: [n]``, and supports any
number of classes the problem allows. Extra input dimensions beyond a
problem's intrinsic ones are filled with noise so ``input_dim`` is honoured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
from pydantic import Field, model_validator

from engine.config import Section
from engine.errors import ConfigError

ProblemType = Literal["spirals", "moons", "clusters", "spheres", "complex_moons"]


class DataConfig(Section):
    """Which synthetic problem to generate and how to split it."""

    problem_type: ProblemType = Field("spirals", description="Synthetic problem.")
    input_dim: int = Field(2, ge=2, le=4096, description="Input dimensionality (extra dims are noise).")
    n_samples: int = Field(2000, ge=20, le=5_000_000, description="Total samples before the split.")
    noise: float = Field(0.15, ge=0, le=10, description="Noise std of the generator.")
    n_centers: int = Field(3, ge=2, le=1000, description="Classes for clusters and spheres.")
    cluster_std: float = Field(1.0, gt=0, le=100, description="Cluster std (clusters).")
    train_frac: float = Field(0.8, gt=0, lt=1, description="Fraction of samples used for training.")
    spiral_turns: float = Field(2.0, gt=0, le=10, description="Turns per spiral arm (spirals).")

    @model_validator(mode="after")
    def _both_splits_non_empty(self) -> "DataConfig":
        n_train = int(round(self.train_frac * self.n_samples))
        if not 1 <= n_train < self.n_samples:
            raise ConfigError("train_frac", self.train_frac,
                              f"must leave both splits non-empty for n_samples={self.n_samples}")
        return self


@dataclass(frozen=True)
class Split:
    """A train/validation split as numpy arrays."""

    x_train: np.ndarray  # [n_train, d] float32
    y_train: np.ndarray  # [n_train] int64
    x_val: np.ndarray  # [n_val, d] float32
    y_val: np.ndarray  # [n_val] int64
    n_classes: int

    @property
    def input_dim(self) -> int:
        """Feature dimension."""
        return int(self.x_train.shape[1])


def _spirals(cfg: DataConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = cfg.n_samples // 2
    t = np.sqrt(rng.uniform(0, 1, n)) * cfg.spiral_turns * 2 * np.pi  # sqrt: even density along the arm
    arm = np.stack([t * np.cos(t), t * np.sin(t)], 1) / (cfg.spiral_turns * 2 * np.pi)
    x = np.concatenate([arm, -arm]) + rng.normal(0, cfg.noise * 0.1, (2 * n, 2))
    return x, np.repeat([0, 1], n)


def _moons(cfg: DataConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_moons

    return make_moons(cfg.n_samples, noise=cfg.noise, random_state=int(rng.integers(2**31)))


def _complex_moons(cfg: DataConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_blobs, make_moons

    n_m = cfg.n_samples // 2
    xm, ym = make_moons(n_m, noise=cfg.noise, random_state=int(rng.integers(2**31)))
    xb, yb = make_blobs(cfg.n_samples - n_m, centers=[(-1.5, 1.5), (2.5, -1.0)],
                        cluster_std=0.3 + cfg.noise, random_state=int(rng.integers(2**31)))
    return np.concatenate([xm, xb]), np.concatenate([ym, yb])


def _clusters(cfg: DataConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_blobs

    return make_blobs(cfg.n_samples, n_features=cfg.input_dim, centers=cfg.n_centers,
                      cluster_std=cfg.cluster_std, random_state=int(rng.integers(2**31)))


def _spheres(cfg: DataConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Concentric shells, one class per shell, radius 1..n_centers.
    d = cfg.input_dim
    y = rng.integers(0, cfg.n_centers, cfg.n_samples)
    direction = rng.normal(size=(cfg.n_samples, d))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radius = (y + 1) + rng.normal(0, cfg.noise, cfg.n_samples)
    return direction * radius[:, None], y


_GENERATORS: dict[str, Callable[[DataConfig, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "spirals": _spirals, "moons": _moons, "complex_moons": _complex_moons,
    "clusters": _clusters, "spheres": _spheres,
}


def make_problem(cfg: DataConfig, seed: int) -> Split:
    """Generate, pad to ``input_dim``, standardise and split a problem."""
    gen = _GENERATORS.get(cfg.problem_type)
    if gen is None:
        raise ConfigError("problem_type", cfg.problem_type, "allowed: " + ", ".join(sorted(_GENERATORS)))
    rng = np.random.default_rng(seed)
    x, y = gen(cfg, rng)
    if x.shape[1] < cfg.input_dim:
        pad = rng.normal(0, max(cfg.noise, 1e-3), (x.shape[0], cfg.input_dim - x.shape[1]))
        x = np.concatenate([x, pad], 1)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    order = rng.permutation(len(y))
    x, y = x[order].astype(np.float32), y[order].astype(np.int64)
    n_train = int(round(cfg.train_frac * len(y)))
    if n_train < 1 or n_train >= len(y):
        raise ConfigError("train_frac", cfg.train_frac, f"must leave both splits non-empty for n_samples={cfg.n_samples}")
    return Split(x[:n_train], y[:n_train], x[n_train:], y[n_train:], int(y.max()) + 1)

"""Task streams for loss-of-plasticity experiments.

A stream is stateful: it owns a seeded ``torch.Generator`` and the current task
index; ``begin_task()`` draws the next task from the generator, so a stream
restored with :meth:`load_state_dict` continues exactly. Per task it offers:

* ``batches(batch_size)``: one pass over the task's training data (shuffled);
* ``heldout()``: the task's held-out split (the family's val metrics);
* ``probe(n)``: a fixed set of inputs (the same samples every task, shown in
  the current task's form) for rank and dormancy diagnostics.

Streams:

``PermutedImages``
    images from :func:`engine.data.images.load_images`; every task applies a new
    fixed pixel permutation (task 0 included) to all images; the held-out split
    is a fixed stratified fraction of the images.
``SlowRegression`` (Dohare et al.'s slowly-changing regression / bit flipping)
    inputs are ``n_bits`` bits: the first ``slow_bits`` stay fixed within a task
    and one of them (chosen at random) flips at the start of every task after
    the first; the other bits are random per sample. Targets come from a fixed
    random network of ``target_units`` linear-threshold units (LTU) with +-1
    weights on the bits plus a bias input, thresholds
    theta_i = (n_bits + 1) * beta - S_i (S_i = number of negative input weights
    of LTU i), and +-1 output weights. A task is ``task_samples`` samples (the
    flip period).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import Tensor

from engine.data.images import ImageSet, stratified_split


class PermutedImages:
    """Permuted-pixel classification tasks over one image set."""

    kind = "classification"

    def __init__(self, images: ImageSet, seed: int, heldout_frac: float = 0.1,
                 device: torch.device | None = None) -> None:
        self.device = device or torch.device("cpu")
        train_idx, test_idx = stratified_split(images.y, heldout_frac, seed)
        x = torch.from_numpy(images.x)  # [n, d] in [0, 1]
        y = torch.from_numpy(images.y)
        self._x_train, self._y_train = x[train_idx].to(self.device), y[train_idx].to(self.device)
        self._x_test, self._y_test = x[test_idx].to(self.device), y[test_idx].to(self.device)
        self._x_all = x.to(self.device)
        self.in_dim, self.out_dim = int(x.shape[1]), int(images.y.max()) + 1
        self.gen = torch.Generator().manual_seed(seed)
        self.task = -1
        self.perm = torch.arange(self.in_dim)
        self._cache: dict[str, Tensor] = {}

    @property
    def train_size(self) -> int:
        """Training samples per task."""
        return len(self._y_train)

    def begin_task(self) -> None:
        """Advance to the next task: a new pixel permutation from the generator."""
        self.task += 1
        self.perm = torch.randperm(self.in_dim, generator=self.gen)
        self._cache = {}

    def _permuted(self, name: str, x: Tensor) -> Tensor:
        if name not in self._cache:
            self._cache[name] = x[:, self.perm.to(x.device)].contiguous()
        return self._cache[name]

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """One shuffled pass over the current task's training data."""
        x = self._permuted("train", self._x_train)
        order = torch.randperm(len(self._y_train), generator=self.gen).to(self.device)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield x[idx], self._y_train[idx]

    def heldout(self) -> tuple[Tensor, Tensor]:
        """The current task's held-out images and labels."""
        return self._permuted("test", self._x_test), self._y_test

    def probe(self, n: int) -> Tensor:
        """The first ``n`` images (all of them if fewer), in the current task's permutation."""
        return self._permuted("all", self._x_all)[:n]

    def state_dict(self) -> dict[str, Any]:
        """Task index, generator and current permutation."""
        return {"task": self.task, "gen": self.gen.get_state(), "perm": self.perm.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.task, self.perm = int(state["task"]), state["perm"].clone()
        self.gen.set_state(state["gen"])
        self._cache = {}


class SlowRegression:
    """Dohare et al.'s slowly-changing regression problem (bit flipping)."""

    kind = "regression"

    def __init__(self, seed: int, n_bits: int = 20, slow_bits: int = 15, task_samples: int = 10000,
                 heldout_samples: int = 1000, target_units: int = 100, beta: float = 0.7,
                 device: torch.device | None = None) -> None:
        if not 0 < slow_bits < n_bits:
            raise ValueError(f"slow_bits must be in 1..{n_bits - 1}, not {slow_bits}")
        self.device = device or torch.device("cpu")
        self.n_bits, self.slow_bits = n_bits, slow_bits
        self.task_samples, self.heldout_samples = task_samples, heldout_samples
        self.in_dim, self.out_dim = n_bits, 1
        self.gen = torch.Generator().manual_seed(seed)
        # The fixed target network: LTU weights on [bits, 1] and output weights, all +-1.
        self.w_target = self._signs(target_units, n_bits + 1)      # [units, n_bits + 1]
        negatives = (self.w_target < 0).sum(1).float()              # S_i
        self.theta = (n_bits + 1) * beta - negatives                # [units]
        self.v_target = self._signs(target_units)                   # [units]
        self.slow = torch.randint(0, 2, (slow_bits,), generator=self.gen).float()  # [slow_bits]
        self._probe_fast = torch.randint(0, 2, (4096, n_bits - slow_bits), generator=self.gen).float()
        self.task = -1
        self._held: tuple[Tensor, Tensor] | None = None

    def _signs(self, *shape: int) -> Tensor:
        return torch.randint(0, 2, shape, generator=self.gen).float().mul_(2).sub_(1)

    @property
    def train_size(self) -> int:
        """Training samples per task."""
        return self.task_samples

    def target(self, x: Tensor) -> Tensor:
        """The target network's output [n, 1] for bit inputs ``x`` [n, n_bits]."""
        xb = torch.cat([x.cpu(), torch.ones(len(x), 1)], 1)            # bias input
        ltu = (xb @ self.w_target.T > self.theta).float()              # [n, units]
        return (ltu @ self.v_target).unsqueeze(1).to(x.device)

    def _inputs(self, fast: Tensor) -> Tensor:
        return torch.cat([self.slow.expand(len(fast), -1), fast], 1)   # [n, n_bits]

    def _sample(self, n: int) -> Tensor:
        return self._inputs(torch.randint(0, 2, (n, self.n_bits - self.slow_bits), generator=self.gen).float())

    def begin_task(self) -> None:
        """Next task: flip one random slow bit (not before the first task)."""
        self.task += 1
        if self.task > 0:
            j = int(torch.randint(0, self.slow_bits, (1,), generator=self.gen))
            self.slow[j] = 1.0 - self.slow[j]
        self._held = None

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """``task_samples`` fresh samples of the current task in mini-batches."""
        x = self._sample(self.task_samples)
        y = self.target(x)
        x, y = x.to(self.device), y.to(self.device)
        for i in range(0, self.task_samples, batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]

    def heldout(self) -> tuple[Tensor, Tensor]:
        """Fresh held-out samples of the current task (drawn once per task, on first use)."""
        if self._held is None:
            x = self._sample(self.heldout_samples)
            self._held = (x.to(self.device), self.target(x).to(self.device))
        return self._held

    def probe(self, n: int) -> Tensor:
        """``n`` (<= 4096) inputs with fixed fast bits and the current slow bits."""
        return self._inputs(self._probe_fast[:n]).to(self.device)

    def state_dict(self) -> dict[str, Any]:
        """Task index, slow bits, generator and the held-out set of this task."""
        return {"task": self.task, "gen": self.gen.get_state(), "slow": self.slow.clone(),
                "held": None if self._held is None else tuple(t.cpu() for t in self._held)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.task, self.slow = int(state["task"]), state["slow"].clone()
        self.gen.set_state(state["gen"])
        held = state.get("held")
        self._held = None if held is None else tuple(t.to(self.device) for t in held)  # type: ignore[assignment]

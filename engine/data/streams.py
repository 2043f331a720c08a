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
``ClassIncrementalImages`` (the class-incremental setting of the loss-of-plasticity literature)
    the same images; classes arrive in a seeded order: the first
    ``tasks_per_increment`` tasks train on ``initial_classes`` classes, then
    every ``tasks_per_increment`` tasks ``classes_per_increment`` more join, and
    each task is one pass over all classes seen so far (held-out split: the
    seen classes' held-out images). Once every class is in, the next *cycle*
    starts over with a new class order and a new pixel permutation, so a long
    stream repeats the same class-incremental schedule on fresh inputs and
    cycles can be compared with each other.
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

import math
from typing import Any, Iterator

import torch
from torch import Tensor

from engine.data.images import ImageSet, stratified_split
from engine.errors import ParameterError

#: Samples gathered at once when a task's shuffled pass is cut into batches.
_CHUNK = 4096


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

    def _train(self) -> tuple[Tensor, Tensor]:
        """The current task's training images [n, d] (permuted) and labels [n]."""
        return self._permuted("train", self._x_train), self._y_train

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """One shuffled pass over the current task's training data."""
        x, y = self._train()
        order = torch.randperm(len(y), generator=self.gen).to(self.device)
        # One gather per chunk of batches, then views: a per-batch gather costs
        # more than a small learner's step at batch size 1. Chunks are whole
        # batches, so the batches (and their values) are those of a per-batch gather.
        chunk = batch_size * max(1, _CHUNK // batch_size)
        for c in range(0, len(order), chunk):
            idx = order[c:c + chunk]
            xs, ys = x[idx], y[idx]  # [<= chunk, d], [<= chunk]
            for i in range(0, len(idx), batch_size):
                yield xs[i:i + batch_size], ys[i:i + batch_size]

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


class ClassIncrementalImages(PermutedImages):
    """Classes arrive in a seeded order; each task passes once over every class seen so far."""

    def __init__(self, images: ImageSet, seed: int, heldout_frac: float = 0.1,
                 device: torch.device | None = None, initial_classes: int = 2,
                 classes_per_increment: int = 1, tasks_per_increment: int = 1) -> None:
        super().__init__(images, seed, heldout_frac, device)
        n = self.out_dim
        for key, value, high in (("initial_classes", initial_classes, n),
                                 ("classes_per_increment", classes_per_increment, n),
                                 ("tasks_per_increment", tasks_per_increment, None)):
            if value < 1 or (high is not None and value > high):
                raise ParameterError(key, value, "an integer >= 1" if high is None
                                     else f"1..{high} (the image set has {n} classes)")
        self.n_classes = n
        self.initial, self.per_increment, self.tasks_per_increment = (
            initial_classes, classes_per_increment, tasks_per_increment)
        #: class sets per cycle: initial, then + per_increment until all n are in
        self.increments = 1 + math.ceil((n - initial_classes) / classes_per_increment)
        self.tasks_per_cycle = self.increments * tasks_per_increment
        self.order = torch.arange(n)  # class order of the current cycle
        self.seen = 0                 # classes in the current task
        self.cycle = -1

    @property
    def train_size(self) -> int:
        """Training samples of the current task (the seen classes'; 0 before the first task)."""
        return len(self._train()[1]) if self.seen else 0

    @property
    def seen_classes(self) -> list[int]:
        """Labels of the classes the current task trains on, in arrival order."""
        return self.order[:self.seen].tolist()

    def newest_classes(self) -> Tensor:
        """Labels [k] of the current task's most recent increment (the initial classes in a cycle's first tasks)."""
        j = (self.task % self.tasks_per_cycle) // self.tasks_per_increment  # increment within the cycle
        start = 0 if j == 0 else min(self.n_classes, self.initial + (j - 1) * self.per_increment)
        return self.order[start:self.seen]

    def begin_task(self) -> None:
        """Next task: more classes every ``tasks_per_increment`` tasks; a new cycle after all."""
        self.task += 1
        pos = self.task % self.tasks_per_cycle
        if pos == 0:  # a new cycle: new class order, new pixel permutation
            self.cycle += 1
            self.order = torch.randperm(self.n_classes, generator=self.gen)
            self.perm = torch.randperm(self.in_dim, generator=self.gen)
            self._cache = {}
        seen = min(self.n_classes, self.initial + (pos // self.tasks_per_increment) * self.per_increment)
        if seen != self.seen:
            self.seen = seen
            self._cache = {}

    def _subset(self, name: str, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        key = name + "_y"
        if key not in self._cache:
            keep = torch.isin(y, self.order[:self.seen].to(y.device)).nonzero().flatten()  # [m]
            self._cache[key] = y[keep]
            self._cache[name] = x[keep][:, self.perm.to(x.device)].contiguous()
        return self._cache[name], self._cache[key]

    def _train(self) -> tuple[Tensor, Tensor]:
        return self._subset("train", self._x_train, self._y_train)

    def heldout(self) -> tuple[Tensor, Tensor]:
        """Held-out images and labels of the seen classes, in the current permutation."""
        return self._subset("test", self._x_test, self._y_test)

    def state_dict(self) -> dict[str, Any]:
        """Task index, generator, permutation, cycle, class order and classes seen."""
        return {**super().state_dict(), "cycle": self.cycle, "order": self.order.clone(), "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.cycle, self.order, self.seen = int(state["cycle"]), state["order"].clone(), int(state["seen"])


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

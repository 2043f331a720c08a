"""One rank's step policy for the trainer: shards, the DDP forward, agreed loss and stop.

See :mod:`engine.distributed` for the design. :class:`DataParallel` implements
:class:`engine.training.parallel.StepPolicy` and the row hooks of
:mod:`engine.parallel`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import warnings
import zlib
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)


class LockstepError(RuntimeError):
    """The ranks' structures differ: a decision was not taken identically on every rank."""


class _LossModule(nn.Module):
    """Owns the experiment's model so DDP sees its parameters; forward = the family's compute_loss."""

    def __init__(self, exp: Any) -> None:
        super().__init__()
        self.model = exp.model
        self._exp = exp
        self.call: tuple[Any, int] | None = None  # (shard, step) of the running forward

    def forward(self) -> torch.Tensor:
        assert self.call is not None
        batch, step = self.call
        return self._exp.compute_loss(batch, step)


def _weighted_allreduce(state: "DataParallel", bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Comm hook: sum of shard gradients weighted by shard share (b_r / B): the global batch's mean."""
    buf = bucket.buffer()  # flat gradients of this bucket, [numel]
    buf.mul_(state.weight)
    fut = dist.all_reduce(buf, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


# DDP checks the hook's annotations as objects; with postponed evaluation they are strings.
_weighted_allreduce.__annotations__.update(bucket=dist.GradBucket, state=object)
_weighted_allreduce.__annotations__["return"] = torch.futures.Future[torch.Tensor]


def trainable(exp: Any) -> list[tuple[str, nn.Parameter]]:
    """Model parameters the main optimizer updates and that require grad: what DDP averages.

    Parameters outside it (a training seed's child, which learns from its
    reservoir in a backward of its own) are left out, so DDP never hooks into
    such a backward; their inputs are the same on every rank instead.
    """
    opt = {id(p) for g in exp.optimizer.param_groups for p in g["params"]}
    return [(n, p) for n, p in exp.model.named_parameters() if id(p) in opt and p.requires_grad]


def structure(exp: Any) -> str:
    """The experiment's structure: parameter names, shapes, requires_grad, optimizer membership."""
    opt = {id(p) for g in exp.optimizer.param_groups for p in g["params"]}
    parts = [f"{n}:{tuple(p.shape)}:{int(p.requires_grad)}:{int(id(p) in opt)}"
             for n, p in exp.model.named_parameters()]
    return ";".join(parts) + f"|groups={[len(g['params']) for g in exp.optimizer.param_groups]}"


def digest(*objs: Any) -> str:
    """sha256 of tensors (dtype, shape, bytes), dataclasses, mappings and sequences, by value."""
    h = hashlib.sha256()

    def feed(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            h.update(type(obj).__name__.encode())  # a plan: its type and every field by value
            for f in dataclasses.fields(obj):
                h.update(f.name.encode())
                feed(getattr(obj, f.name))
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                h.update(str(k).encode())
                feed(obj[k])
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                feed(v)
        else:
            h.update(repr(obj).encode())

    for obj in objs:
        feed(obj)
    return h.hexdigest()


def state_hash(exp: Any) -> str:
    """sha256 of the model's state (parameters, buffers, extra state) and the optimizer's."""
    return digest(exp.model.state_dict(), exp.optimizer.state_dict())


class DataParallel:
    """Rank ``rank`` of ``world``: shards batches, runs the DDP forward, agrees on loss and stop.

    ``debug_dir`` (tests): each rank appends ``rank<r>.jsonl`` with its state
    hash after every structural change, at every epoch end and at the end.
    """

    def __init__(self, rank: int, world: int, debug_dir: Path | None = None,
                 comm_device: torch.device | None = None) -> None:
        self.rank, self.world, self.debug_dir = rank, world, debug_dir
        self.comm_device = comm_device or torch.device("cpu")  # nccl: the rank's GPU
        self.weight = 1.0 / world  # this rank's share of the running global batch
        self.sizes: list[int] | None = None  # real shard sizes of the running step, per rank
        self.exp: Any = None  # the experiment of the latest step (a rollback replaces it)
        self._ddp: DistributedDataParallel | None = None
        self._module: _LossModule | None = None
        self._key: tuple[int, ...] = ()
        self._structure = ""
        self._step = 0

    # -- the trainer's step policy ------------------------------------------------
    def shard(self, batch: Any) -> Any:
        """This rank's contiguous rows of the global ``batch`` (sizes differ by at most one)."""
        n = _batch_len(batch)
        base, extra = divmod(n, self.world)
        self.sizes = [base + (r < extra) for r in range(self.world)]
        start = sum(self.sizes[:self.rank])
        own = self.sizes[self.rank]
        self.weight = own / n if n else 0.0
        if own == 0:  # fewer rows than ranks: compute on the whole batch, count for nothing
            return batch
        return _slice(batch, start, start + own)

    def compute_loss(self, exp: Any, batch: Any, step: int) -> torch.Tensor:
        """``exp.compute_loss`` inside the DDP forward (rebuilt when the trainable parameters changed)."""
        self.exp, self._step = exp, step
        params = trainable(exp)
        if not params:  # nothing to average (e.g. a frozen trunk with no blending seed)
            self._ddp = self._module = None
            self._key = ()
            return exp.compute_loss(batch, step)
        key = (id(exp), id(exp.model), *(id(p) for _, p in params))
        if key != self._key or self._ddp is None:
            self._rebuild(exp, {n for n, _ in params})
            self._key = key
        assert self._module is not None and self._ddp is not None
        self._module.call = (batch, step)
        try:
            return self._ddp()
        finally:
            self._module.call = None

    def _rebuild(self, exp: Any, names: set[str]) -> None:
        """A new DDP wrapper over the trainable parameters; its constructor broadcasts rank 0's."""
        self._ddp = None  # the old reducer (and its autograd hooks) goes first
        module = _LossModule(exp)
        ignore = [f"model.{n}" for n, _ in exp.model.named_parameters() if n not in names]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignore)
        # broadcast_buffers off: buffers (a seed's reservoir, ...) are the same on every rank by
        # construction (global rows), so no per-forward broadcast; parameters come from rank 0.
        with warnings.catch_warnings():  # newer torch renames broadcast_buffers; the old name still works
            warnings.simplefilter("ignore", FutureWarning)
            self._ddp = DistributedDataParallel(module, broadcast_buffers=False, find_unused_parameters=True)
        self._ddp.register_comm_hook(self, _weighted_allreduce)
        self._module = module
        log.info("rank %d: DDP wrapper rebuilt over %d parameters", self.rank, len(names))

    def loss_value(self, loss: torch.Tensor, stop: bool) -> tuple[float, bool]:
        """The global batch's loss and the agreed stop; checks every rank has the same structure."""
        own = self.sizes[self.rank] if self.sizes else 0
        value = float(loss.detach())
        shape = structure(self.exp) if self.exp is not None else ""
        changed = shape != self._structure
        self._structure = shape
        digest = float(zlib.crc32(shape.encode()))  # < 2**32: exact in float64
        mine = torch.tensor([value if math.isfinite(value) else 0.0, float(own),
                             float(not math.isfinite(value)), float(stop), digest],
                            dtype=torch.float64, device=self.comm_device)
        rows = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(rows, mine)
        table = torch.stack(rows).cpu()  # [world, 5], the same on every rank
        if len(set(table[:, 4].tolist())) > 1:
            raise LockstepError(f"the ranks' model structures differ at step {self._step} "
                                f"(structure crc per rank: {table[:, 4].tolist()})")
        if changed:
            self._record("change")
        total = float(table[:, 1].sum())
        if float(table[:, 2].sum()) > 0 or total == 0:
            return math.nan, bool(table[:, 3].max() > 0)
        weighted = 0.0
        for r in range(self.world):  # rank order: the same float sum on every rank
            weighted += float(table[r, 0]) * float(table[r, 1])
        return weighted / total, bool(table[:, 3].max() > 0)

    def agree_stop(self, stop: bool) -> bool:
        """Epoch end: stop if any rank was asked to (also records the state hash for tests)."""
        flag = torch.tensor([float(stop)], dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self._record("epoch")
        return bool(flag.item() > 0)

    # -- engine.parallel row hooks ----------------------------------------------------
    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """This shard's rows of ``t`` [b_r, ...] -> the global batch's [B, ...], in rank order."""
        if self.sizes is None:
            return t
        own, most = self.sizes[self.rank], max(self.sizes)
        mine = t[:own].detach().contiguous()  # statistics: never differentiated
        if own < most:  # all_gather needs one shape: pad, then trim each rank's part
            mine = torch.cat([mine, mine.new_zeros((most - own, *t.shape[1:]))])
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine)
        return torch.cat([p[:s] for p, s in zip(parts, self.sizes)])

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The global batch's mean for this shard's mean ``t`` (0-d): shard means weighted by size."""
        if self.sizes is None:
            return t
        own = self.sizes[self.rank]
        total = t.detach().reshape(1).to(torch.float64) * own if own else t.new_zeros(1, dtype=torch.float64)
        dist.all_reduce(total)
        return (total / sum(self.sizes)).reshape(()).to(t.dtype)

    def plan(self, plan: Any) -> Any:
        """Rank 0's structural ``plan``, broadcast to every rank, which applies it.

        Every rank derived its own plan from the same inputs; one that derived
        another (its decision drifted) fails the run here, before any surgery,
        instead of training a different model under the same run.
        """
        box = [plan if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, device=self.comm_device)
        chosen = box[0]
        if self.rank != 0 and digest(chosen) != digest(plan):
            raise LockstepError(f"rank {self.rank} derived another structural plan than rank 0 at step "
                                f"{self._step}: {type(plan).__name__} vs rank 0's {type(chosen).__name__}")
        return chosen

    # -- debugging -------------------------------------------------------------------
    def _record(self, why: str) -> None:
        if self.debug_dir is None or self.exp is None:
            return
        line = {"rank": self.rank, "step": self._step, "why": why, "hash": state_hash(self.exp),
                "structure": zlib.crc32(self._structure.encode())}
        with open(self.debug_dir / f"rank{self.rank}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def barrier(self) -> None:
        """Wait for every rank (the end of a run: rank 0 may still be writing its results)."""
        dist.barrier()

    def finish(self) -> None:
        """Record the final state hash (tests) and drop the wrapper."""
        self._record("end")
        self._ddp = self._module = None


def _tensors(batch: Any) -> list[torch.Tensor]:
    if dataclasses.is_dataclass(batch):
        return [v for v in (getattr(batch, f.name) for f in dataclasses.fields(batch)) if isinstance(v, torch.Tensor)]
    if isinstance(batch, (tuple, list)):
        return [v for v in batch if isinstance(v, torch.Tensor)]
    if isinstance(batch, torch.Tensor):
        return [batch]
    raise TypeError(f"cannot shard a batch of type {type(batch).__name__}")


def _batch_len(batch: Any) -> int:
    lengths = {len(t) for t in _tensors(batch)}
    if len(lengths) != 1:
        raise TypeError(f"a batch's tensors must share their first dimension, got {sorted(lengths)}")
    return lengths.pop()


def _slice(batch: Any, a: int, b: int) -> Any:
    """Rows ``a:b`` of every tensor of ``batch`` (tensor, tuple/list or dataclass)."""
    if isinstance(batch, torch.Tensor):
        return batch[a:b]
    if dataclasses.is_dataclass(batch):
        return dataclasses.replace(batch, **{f.name: getattr(batch, f.name)[a:b] for f in dataclasses.fields(batch)
                                             if isinstance(getattr(batch, f.name), torch.Tensor)})
    return type(batch)(v[a:b] if isinstance(v, torch.Tensor) else v for v in batch)

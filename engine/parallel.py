"""What families and models see of a data-parallel run: the rows of the global batch.

In a data-parallel run (:mod:`engine.distributed`) every rank draws the same
global batch and computes its loss on its own contiguous shard of it. Most
of a family never notices: gradients are averaged by DDP and decisions are
made from data every rank holds (validation sets, probes, generator draws).
Statistics of the *training* batch are the exception: a seed's reservoir of
interface activations and continual backprop's unit utilities would see only
the rank's shard, differ across ranks and so make different decisions. Such
code passes its per-shard tensors through :func:`global_rows` (and per-shard
means through :func:`global_mean`), which return the whole global batch's
rows in order on every rank: the same inputs as one process, the same on every
rank. In a single process both are the identity and cost nothing.

This module holds no ``torch.distributed`` code: the run installs its hooks
(:func:`install`), so models, mechanisms and families stay free of it.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from torch import Tensor


class RowHooks(Protocol):
    """Collectives of the running data-parallel step (see :mod:`engine.distributed`)."""

    def rows(self, t: Tensor) -> Tensor:
        """This shard's ``t`` [b_r, ...] -> the global batch's [B, ...] (rank order)."""
        ...

    def mean(self, t: Tensor) -> Tensor:
        """This shard's mean (0-d) -> the global batch's mean (shard means weighted by size)."""
        ...

    def plan(self, plan: object) -> object:
        """Rank 0's structural plan, broadcast; fails the run if this rank derived another."""
        ...


_hooks: RowHooks | None = None
PlanT = TypeVar("PlanT")


def install(hooks: RowHooks | None) -> None:
    """Install (or with None remove) the running data-parallel run's hooks."""
    global _hooks
    _hooks = hooks


def data_parallel() -> bool:
    """Whether this process is one rank of a data-parallel run."""
    return _hooks is not None


def global_rows(t: Tensor) -> Tensor:
    """Rows of the global batch for a tensor computed from this rank's shard (identity in one process).

    A collective: every rank must call it at the same point of the same step.
    """
    return t if _hooks is None else _hooks.rows(t)


def global_mean(t: Tensor) -> Tensor:
    """The global batch's mean for this shard's mean ``t`` (0-d; identity in one process)."""
    return t if _hooks is None else _hooks.mean(t)


def agreed_plan(plan: PlanT) -> PlanT:
    """The plan every rank applies: rank 0's, broadcast (identity in one process).

    Rank 0 decides; the other ranks, which derived theirs from the same inputs,
    check that they agree (a rank that does not fails the run) and apply rank
    0's. A collective: :func:`engine.surgery.apply_plan` calls it for every plan.
    """
    return plan if _hooks is None else _hooks.plan(plan)  # type: ignore[return-value]

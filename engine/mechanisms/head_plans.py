"""Plans for whole attention heads: prune heads, clone a head (Net2Net).

Applied by :func:`engine.surgery.apply_plan` (which dispatches to
:mod:`engine.surgery_heads`) to an attention module with the layout of
:class:`engine.models.char_transformer.CausalSelfAttention`: head ``h`` owns
rows ``h*head_dim:(h+1)*head_dim`` of ``q`` and ``k`` ([n_head*head_dim, d]),
every value channel ``j`` with ``v_head[j] == h`` (row ``j`` of ``v``, column
``j`` of ``o``, entries of the per-channel buffers ``gain``/``v_head``/``v_slot``)
and entry ``h`` of ``head_gate`` [n_head].

As with :mod:`engine.mechanisms.plans`, checks that need no model run at
construction, checks against the model (path, head range, optimizer state)
when the plan is applied, and head indices refer to the module as it is when
the plan is applied: prune all heads of one layer with **one** plan
(:func:`prune_plans` groups a pruning order that way).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Iterable, Union

from engine.mechanisms.plans import PlanError, _check_path, _indices

__all__ = ["CloneHead", "HeadPlan", "PruneHeads", "prune_plans"]


@dataclass(frozen=True)
class PruneHeads:
    """Remove heads ``heads`` of the attention module at path ``attn`` (e.g. ``"blocks.1.attn"``).

    Their q/k rows, their value channels (v rows and biases, o columns,
    ``gain``/``v_head``/``v_slot`` entries) and ``head_gate`` entries go; the
    remaining heads are renumbered ``0..H'-1`` in their old order (``v_head``
    rewritten, ``v_slot`` kept) and ``n_head`` becomes ``H'``. Kept entries keep
    their values and optimizer state exactly, so the output equals the unpruned
    module's with the pruned heads' gates at 0 (``o``'s bias is unchanged). At
    least one head must remain.
    """

    attn: str
    heads: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_path("attn", self.attn)
        object.__setattr__(self, "heads", _indices(self.heads, "heads"))


@dataclass(frozen=True)
class CloneHead:
    """Append a Net2Net copy of head ``head`` of the attention module at path ``attn`` as head ``H``.

    The new head ``H`` (= the old ``n_head``) gets copies of ``head``'s q/k rows
    and biases and of its value channels (v rows and biases, ``gain``, same
    ``v_slot``, ``v_head = H``) appended after the existing channels, and the
    parent's ``head_gate`` value (1 unless the parent is being gated). The o
    columns of the parent's channels **and** of the copies are both set to half
    the parent's columns, so with ``noise == 0`` the module's output is
    unchanged (both heads compute the same values, each contributing half).

    Symmetry breaking: ``noise * std(row) * z`` (``z`` ~ N(0, 1) from the
    surgery's generator, drawn for q rows, then k rows, then v rows; std over
    each row's ``d`` inputs) is added to the new head's q, k and v weight rows
    (biases are copied exactly). This perturbs only the copy's half of the
    head's contribution: its values by a relative ~``noise`` and its attention
    logits by ~``noise`` times their size, so the output changes by
    O(noise) relative to the head's share of the output, linearly in ``noise``
    (test model: max logit change 2.5e-5 at ``noise=1e-3``). Without noise the two
    halves get identical gradients (only their optimizer state separates them).

    Optimizer state: the new head's entries start at zero; every existing
    entry keeps its state exactly, including the halved o columns: the gradient
    of an o column is (upstream gradient x its channel's output), neither of
    which cloning changes, so the stored moments still describe that column's
    gradient (halving ``exp_avg`` would halve its next Adam steps for no reason).
    The parent's q/k/v rows do see their gradients halved from now on; Adam's
    update ``m / sqrt(v)`` is scale-invariant, so the stale moments only
    bias the first steps while they decay.
    """

    attn: str
    head: int
    noise: float = 0.0

    def __post_init__(self) -> None:
        _check_path("attn", self.attn)
        try:
            head = -1 if isinstance(self.head, bool) else operator.index(self.head)
        except TypeError:
            head = -1
        if head < 0:
            raise PlanError("head", self.head, "a non-negative integer head index")
        object.__setattr__(self, "head", head)
        if isinstance(self.noise, bool) or not isinstance(self.noise, (int, float)) \
                or not 0 <= self.noise < math.inf:
            raise PlanError("noise", self.noise, "a finite number >= 0")


HeadPlan = Union[PruneHeads, CloneHead]
"""Any head-level change :func:`engine.surgery.apply_plan` can carry out."""


def prune_plans(order: Iterable[tuple[str, int]]) -> list[PruneHeads]:
    """One :class:`PruneHeads` per attention path for ``(path, head)`` pairs (e.g. a pruning order).

    Head indices all refer to the model before any of the plans, which is
    right because each plan touches only its own layer. Paths keep their first
    appearance order; heads are sorted.
    """
    by_path: dict[str, list[int]] = {}
    for path, head in order:
        by_path.setdefault(path, []).append(head)
    return [PruneHeads(path, tuple(sorted(heads))) for path, heads in by_path.items()]

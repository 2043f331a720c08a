"""Training images of the neurogenesis family, by class, behind a guard on learned classes.

Intrinsic replay exists so that old classes' images need not be kept: once a
class has been learned (the base classes after base training, a new class
after its stage) only statistics of its top code remain. With
``stats_source`` ``replay`` (the default) or ``reencode`` :class:`ClassRows` enforces that:
asking for the training rows of a class whose stage is over raises
:class:`StoredDataAccessError`, so no code path (replay statistics,
thresholds, artifacts) can quietly fall back on stored data. With
``stats_source`` ``data`` (the explicit stored-data variant) the guard is
off and old classes are re-read after every stage.

Every read is logged (:attr:`ClassRows.reads`), so a test can check which
classes were touched, and when.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import torch
from torch import Tensor

log = logging.getLogger(__name__)


class StoredDataAccessError(RuntimeError):
    """Training images of an already learned class were requested under data-free replay."""

    def __init__(self, classes: list[int], context: str) -> None:
        self.classes = classes
        super().__init__(f"training images of learned classes {classes} requested ({context}); with "
                         "stats_source 'replay' or 'reencode' a class's images are used only while it is learned "
                         "(allowed: the base classes during base training, the current class in its stage; "
                         "use stats_source 'data' to re-read stored images)")


class ClassRows:
    """Training images ``x`` [n, D] with labels ``y`` [n]; rows are handed out per class.

    ``guard``: raise on rows of retired (already learned) classes. ``context``
    (a callable returning e.g. ``"epoch 63, incremental"``) names the moment
    of each read in :attr:`reads` and in the error.
    """

    def __init__(self, x: Tensor, y: Tensor, guard: bool) -> None:
        if x.dim() != 2 or y.shape != (len(x),):
            raise ValueError(f"x must be [n, D] and y [n]; got {tuple(x.shape)} and {tuple(y.shape)}")
        self._x, self._y = x, y
        self.guard = guard
        self.retired: set[int] = set()
        self.reads: list[tuple[str, tuple[int, ...]]] = []  # (context, classes) per read
        self.context = "setup"

    @property
    def dim(self) -> int:
        """Input dimension D (pixels per image)."""
        return int(self._x.shape[1])

    def __len__(self) -> int:
        return len(self._y)

    def rows(self, classes: Iterable[int]) -> Tensor:
        """Images [m, D] of ``classes``; raises :class:`StoredDataAccessError` for retired classes."""
        wanted = sorted({int(c) for c in classes})
        stale = sorted(set(wanted) & self.retired)
        if self.guard and stale:
            raise StoredDataAccessError(stale, self.context)
        self.reads.append((self.context, tuple(wanted)))
        return self._x[torch.isin(self._y, torch.tensor(wanted, device=self._y.device))]

    def retire(self, classes: Iterable[int]) -> None:
        """Mark ``classes`` as learned: under the guard their rows are never handed out again."""
        new = {int(c) for c in classes} - self.retired
        if new:
            log.debug("classes %s learned; their training images are %s", sorted(new),
                      "no longer read" if self.guard else "still readable (stats_source data)")
        self.retired |= new

    def state_dict(self) -> dict[str, Any]:
        """The retired classes (checkpointed, so a resumed run keeps the guard)."""
        return {"retired": sorted(self.retired)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.retired = {int(c) for c in state["retired"]}

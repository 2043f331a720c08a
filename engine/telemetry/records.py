"""Events that leave a named record: milestones and structural decisions.

They are published on the bus like every other event and re-exported by
:mod:`engine.telemetry.events` (``events.Milestone``, ``events.Decision``).
Their names and kinds become TensorBoard tags, MLflow tag keys and artifact
file names, so they come from small fixed vocabularies and are checked where
the family creates them, not as a sink error at run time; the same tag rule
holds for :class:`engine.telemetry.events.TextSample`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: Longest tag, milestone name or decision kind accepted: they name files and
#: TensorBoard tags, and are few per run.
MAX_TEXT_TAG = 64
_TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_./-")
_KIND_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
#: Largest JSON text of one decision's payload: its scores are per head or per
#: layer, so anything bigger is a bug (e.g. a per-token tensor turned into a list).
MAX_DECISION_BYTES = 1_000_000


def check_tag(what: str, tag: str) -> None:
    """Raise ``ValueError`` unless ``tag`` is 1-MAX_TEXT_TAG of ``[a-z0-9_./-]``, no leading '/' or '..'."""
    if not tag or len(tag) > MAX_TEXT_TAG or not set(tag) <= _TAG_CHARS or tag.startswith("/") or ".." in tag:
        raise ValueError(f"{what} {tag!r}: 1-{MAX_TEXT_TAG} characters of [a-z0-9_./-], no leading '/' or '..'")


@dataclass(frozen=True)
class Milestone:
    """A point the run passed, e.g. ``warmup_stable`` (the validation loss stopped falling fast).

    ``name`` follows the tag rule of text samples (a bounded vocabulary);
    ``detail`` is free text saying why (e.g. the detector's figures). ``step``
    is the trainer's step count at the milestone, ``epoch`` the epoch it
    belongs to (a resume or rollback to an earlier epoch drops it from the
    result files, and the re-run publishes it again).
    """

    step: int
    epoch: int
    name: str
    detail: str = ""

    def __post_init__(self) -> None:
        check_tag("milestone name", self.name)


@dataclass(frozen=True)
class Decision:
    """A structural decision and the scores that drove it (e.g. which heads a round pruned, and why).

    ``kind`` is one lower-case ``[a-z0-9_]`` word (``head_prune``,
    ``head_clone``, ...): one file-name component and one TensorBoard tag
    component. ``payload`` must be JSON as it is: dicts with string keys,
    lists, strings, finite numbers, booleans and None (no NaN, no numpy
    scalars, no tensors). The stored payload is a JSON round-trip copy, so a
    family that mutates its dict afterwards cannot change what the threaded
    sinks write later.
    """

    step: int
    epoch: int
    kind: str
    payload: dict[str, Any]

    def __post_init__(self) -> None:
        if not self.kind or len(self.kind) > MAX_TEXT_TAG or not set(self.kind) <= _KIND_CHARS:
            raise ValueError(f"decision kind {self.kind!r}: 1-{MAX_TEXT_TAG} characters of [a-z0-9_]")
        if not isinstance(self.payload, dict):
            raise TypeError(f"decision payload must be a dict, got {type(self.payload).__name__}")
        bad = _non_string_key(self.payload)
        if bad is not None:  # json.dumps would turn 3 into "3" silently: readers would not find it
            raise ValueError(f"decision {self.kind!r}: payload key {bad!r} is not a string")
        try:
            text = json.dumps(self.payload, allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"decision {self.kind!r}: payload is not plain JSON ({exc})") from None
        if len(text) > MAX_DECISION_BYTES:
            raise ValueError(f"decision {self.kind!r}: payload of {len(text)} bytes (at most {MAX_DECISION_BYTES})")
        object.__setattr__(self, "payload", json.loads(text))

    def record(self) -> dict[str, Any]:
        """The decision as one JSON object: ``epoch``, ``step``, ``kind`` and ``payload``."""
        return {"epoch": self.epoch, "step": self.step, "kind": self.kind, "payload": self.payload}


def _non_string_key(value: Any) -> Any:
    """The first dict key in ``value`` (at any depth) that is not a string, else None."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return k
            found = _non_string_key(v)
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for v in value:
            found = _non_string_key(v)
            if found is not None:
                return found
    return None

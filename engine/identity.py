"""Run identity: a unique ``run_id`` per launch and the ``config_hash`` it shares.

``config_hash`` (:func:`engine.config.config_hash`) names *what* is computed:
every launch of one config has the same hash, so it groups repeats. ``run_id``
names *one launch*: ``<config_hash>-<6 random hex>``, so two launches of one
config never share Prometheus series, alert windows, MLflow runs or run
directories. Both are short and label-safe (``[0-9a-f-]``).

The identity is created once, when the run directory is created, and stored in
``run_dir/identity.json``; everything that runs that directory again (``--resume``,
a sweep trial re-run) reads it back, so a resumed run keeps its ``run_id``.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.config import RunConfig, config_hash
from engine.errors import ConfigError
from engine.fsutil import atomic_write_text

log = logging.getLogger(__name__)

IDENTITY_NAME = "identity.json"
#: Random hex digits appended to the config hash: 16.7 M ids per config, so two
#: launches of one config colliding (even in the same second) is negligible.
SUFFIX_HEX = 6
_LABEL_SAFE = re.compile(r"^[0-9a-f]+(-[0-9a-f]+)?$")
_EXPECTED = 'allowed: a JSON object {"run_id": "<hex>-<hex>", "config_hash": "<hex>"}'


@dataclass(frozen=True)
class RunIdentity:
    """Who a run is: ``run_id`` unique per launch, ``config_hash`` shared by launches of one config."""

    run_id: str
    config_hash: str


def new_identity(cfg: RunConfig | str) -> RunIdentity:
    """A fresh identity for a new launch of ``cfg`` (or of an already computed config hash)."""
    digest = cfg if isinstance(cfg, str) else config_hash(cfg)
    return RunIdentity(f"{digest}-{secrets.token_hex(SUFFIX_HEX // 2)}", digest)


def legacy_identity(cfg: RunConfig | str) -> RunIdentity:
    """Identity of a run directory written before ``identity.json`` existed.

    Such runs reported the config hash as their run id; keeping it means a
    resumed old run continues the same Prometheus series and MLflow tag.
    """
    digest = cfg if isinstance(cfg, str) else config_hash(cfg)
    return RunIdentity(digest, digest)


def write_identity(run_dir: Path, identity: RunIdentity) -> None:
    """Store ``identity`` in ``run_dir/identity.json`` (atomically)."""
    atomic_write_text(Path(run_dir) / IDENTITY_NAME, json.dumps(asdict(identity), indent=2) + "\n")


def read_identity(run_dir: Path) -> RunIdentity | None:
    """The identity stored in ``run_dir``, or None if there is none (an older run).

    An unreadable or malformed file is a :class:`ConfigError` naming the file:
    silently inventing a new id would split the run's series in two.
    """
    path = Path(run_dir) / IDENTITY_NAME
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(str(path), f"<{type(exc).__name__}: {exc}>", _EXPECTED) from None
    run_id = doc.get("run_id") if isinstance(doc, dict) else None
    digest = doc.get("config_hash") if isinstance(doc, dict) else None
    if not (isinstance(run_id, str) and isinstance(digest, str) and _LABEL_SAFE.match(run_id)
            and _LABEL_SAFE.match(digest)):
        raise ConfigError(str(path), doc, _EXPECTED)
    return RunIdentity(run_id, digest)


def ensure_identity(run_dir: Path, cfg: RunConfig | str, *, legacy: bool) -> RunIdentity:
    """The identity stored in ``run_dir``; if there is none, create and store one.

    ``cfg`` is the run's config or its config hash. ``legacy`` (a directory
    that has run before, e.g. it holds a checkpoint) falls back to
    :func:`legacy_identity` instead of a new id, so the run keeps the id it had.
    """
    identity = read_identity(run_dir)
    if identity is None:
        identity = legacy_identity(cfg) if legacy else new_identity(cfg)
        if legacy:
            log.info("%s has no %s: keeping the config hash %s as run id", run_dir, IDENTITY_NAME,
                     identity.run_id)
        write_identity(run_dir, identity)
    return identity

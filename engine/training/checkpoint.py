"""Atomic checkpoints: everything needed to continue a run exactly."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.fsutil import atomic_write_bytes

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """Global RNG states of Python, NumPy and torch (CPU and CUDA)."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus RNG states) to ``run_dir/checkpoint.pt`` atomically."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, "rng": rng_state(), **payload}, buf)
    path = Path(run_dir) / CHECKPOINT_NAME
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_checkpoint(run_dir: Path, device: torch.device) -> dict[str, Any] | None:
    """Load ``run_dir/checkpoint.pt`` or return None when there is none."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    # weights_only=False: the payload holds our own RNG tuples and numpy state.
    # Device tensors go to ``device``; CPU tensors stay on the CPU, because RNG
    # and generator states (torch.set_rng_state, Generator.set_state) and
    # CPU-side mechanism statistics must be CPU tensors (a plain
    # map_location=device would move them to CUDA and break a GPU resume).
    target = str(device)
    mapping = {f"cuda:{i}": target for i in range(64)}
    payload = torch.load(path, map_location=mapping, weights_only=False)
    if payload.get("format") != FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format {payload.get('format')!r}, expected {FORMAT_VERSION}")
    return payload

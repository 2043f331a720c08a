"""Atomic checkpoints: everything needed to continue a run exactly.

A checkpoint is loaded with ``torch.load(..., weights_only=True)``, so resuming
a run directory someone else wrote cannot execute code: its unpickler only
rebuilds tensors and plain values. Everything saved must therefore be a
tensor or a plain value (see :func:`check_plain`); the RNG states, which
Python and NumPy hand out as tuples holding arrays, are converted to such
values here and back on load.
"""

from __future__ import annotations

import io
import pickle
import random
import warnings
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import ConfigError
from engine.fsutil import atomic_write_bytes

CHECKPOINT_NAME = "checkpoint.pt"
# 2: loaded with weights_only=True; RNG states and mechanism statistics are
# tensors and plain values (format 1 pickled NumPy arrays and cannot be read safely).
FORMAT_VERSION = 2

# Exactly the types the weights-only unpickler rebuilds (exact types: a
# subclass such as np.float64, an IntEnum or a namedtuple pickles as its own
# class and would be refused on load).
_SCALARS = (type(None), bool, int, float, complex, str, bytes, torch.Size, torch.device, torch.dtype)
_MAPPINGS = (dict, OrderedDict, Counter)
_SEQUENCES = (list, tuple, set)
_TENSORS = (torch.Tensor, torch.nn.Parameter)


class CheckpointError(ConfigError):
    """A checkpoint that cannot be resumed: unsafe, unreadable or of another format.

    A :class:`~engine.errors.ConfigError` on ``resume``: the CLI prints one line
    naming the run directory and exits 2.
    """

    def __init__(self, run_dir: Path, why: str) -> None:
        super().__init__("resume", str(run_dir), why)


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError naming the first value in ``obj`` that weights_only loading would refuse.

    Run at save time, so a state_dict that starts holding (say) a NumPy array
    fails the first checkpoint loudly instead of writing one that cannot be resumed.
    """
    kind = type(obj)
    if kind in _SCALARS or kind in _TENSORS:
        return
    if kind in _MAPPINGS:
        for key, value in obj.items():
            check_plain(key, f"{where} key {key!r}")
            check_plain(value, f"{where}[{key!r}]")
        return
    if kind in _SEQUENCES:
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {kind.__module__}.{kind.__qualname__}: checkpoints hold only tensors "
                    "and plain values (dict/list/tuple/int/float/str/bool/None), so that they load "
                    "with weights_only=True; convert it in its state_dict")


def rng_state() -> dict[str, Any]:
    """Global RNG states of Python, NumPy and torch (CPU and CUDA), as tensors and plain values."""
    version, internal, gauss = random.getstate()
    legacy = np.random.get_state(legacy=False)  # a dict; its key array becomes a tensor
    state: dict[str, Any] = {
        "python": {"version": int(version), "internal": tuple(int(v) for v in internal), "gauss": gauss},
        # uint32 key words fit int64 exactly; torch's uint32 tensors are a partial dtype.
        "numpy": {"bit_generator": str(legacy["bit_generator"]),
                  "key": torch.from_numpy(legacy["state"]["key"].astype(np.int64)),
                  "pos": int(legacy["state"]["pos"]), "has_gauss": int(legacy["has_gauss"]),
                  "gauss": float(legacy["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["internal"]),
                     None if py["gauss"] is None else float(py["gauss"])))
    npy = state["numpy"]
    np.random.set_state({"bit_generator": npy["bit_generator"],
                         "state": {"key": npy["key"].cpu().numpy().astype(np.uint32), "pos": int(npy["pos"])},
                         "has_gauss": int(npy["has_gauss"]), "gauss": float(npy["gauss"])})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus RNG states) to ``run_dir/checkpoint.pt`` atomically.

    Raises TypeError, before writing, when ``payload`` holds anything other
    than tensors and plain values (it could not be loaded back safely).
    """
    document = {"format": FORMAT_VERSION, "rng": rng_state(), **payload}
    check_plain(document)
    buf = io.BytesIO()
    torch.save(document, buf)
    path = Path(run_dir) / CHECKPOINT_NAME
    atomic_write_bytes(path, buf.getvalue())
    return path


def _unsafe_globals(path: Path) -> list[str]:
    """The non-allowed globals a checkpoint names, found by scanning (not running) its pickle."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - only used to word the error; the refusal stands regardless
        return []


def _unpickler_detail(exc: BaseException) -> str:
    """The one line of a weights-only refusal that says what was refused (torch wraps it in advice)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or ln.startswith("Unsupported"):
            return ln.rstrip(".")
    return lines[-1].rstrip(".") if lines else type(exc).__name__


def _refusal(path: Path, exc: BaseException) -> str:
    """Why a checkpoint the weights-only unpickler refused is refused, in one line."""
    names = _unsafe_globals(path)
    detail = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") if names else _unpickler_detail(exc)
    why = (f"checkpoint.pt holds objects other than tensors and plain values ({detail}); "
           "refusing to load it, since unpickling them could run code")
    if names and all(n.split(".")[0] == "numpy" for n in names):
        # Exactly what format 1 wrote (NumPy RNG state, ReDo scores).
        why += ("; it looks like a format-1 checkpoint from an older engine, "
                f"which this engine (format {FORMAT_VERSION}) cannot resume: start a new run")
    return why


def load_checkpoint(run_dir: Path, device: torch.device) -> dict[str, Any] | None:
    """Load ``run_dir/checkpoint.pt`` or return None when there is none.

    Only tensors and plain values are rebuilt (``weights_only=True``); a
    checkpoint holding anything else, one that is not a readable torch file,
    or one of another format raises :class:`CheckpointError` without running
    any of it.
    """
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    # Device tensors go to ``device``; CPU tensors stay on the CPU, because RNG
    # and generator states (torch.set_rng_state, Generator.set_state) and
    # CPU-side mechanism statistics must be CPU tensors (a plain
    # map_location=device would move them to CUDA and break a GPU resume).
    target = str(device)
    mapping = {f"cuda:{i}": target for i in range(64)}
    try:
        with warnings.catch_warnings():
            # An odd pickle protocol only matters through the error below;
            # the CLI's answer to a refused checkpoint is one line.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location=mapping, weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler stops at the first global or opcode it
        # does not allow, before calling anything: nothing of the file has run.
        raise CheckpointError(run_dir, _refusal(path, exc)) from exc
    except Exception as exc:  # noqa: BLE001 - truncated or foreign file: a user-facing error, not a crash
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(run_dir, f"checkpoint.pt is not a readable checkpoint: {type(exc).__name__}: "
                                       f"{first[:200]}") from exc
    found = payload.get("format") if isinstance(payload, dict) else None
    if found != FORMAT_VERSION:
        raise CheckpointError(run_dir, f"checkpoint.pt has format {found!r}, but this engine reads only format "
                                       f"{FORMAT_VERSION}: resume it with the engine version that wrote it, "
                                       "or start a new run")
    return payload

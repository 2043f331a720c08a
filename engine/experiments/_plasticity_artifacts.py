"""Run artifacts of the plasticity family: per-task and per-diagnostics CSVs,
final per-unit signals (NPZ) and PNG curves."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from engine.fsutil import atomic_write_bytes, atomic_write_text, csv_text

TASK_KEYS = ("task", "step", "online_loss", "online_accuracy", "val_loss", "val_accuracy", "units_replaced")


def write_plasticity_artifacts(directory: Path, tasks: list[dict[str, Any]], diag_rows: list[dict[str, Any]],
                               diag_keys: tuple[str, ...], units: dict[str, np.ndarray]) -> None:
    """``tasks.csv``, ``diagnostics.csv``, ``units.npz`` and ``curves.png`` in ``directory``."""
    atomic_write_text(directory / "tasks.csv", csv_text(tasks, TASK_KEYS))
    atomic_write_text(directory / "diagnostics.csv", csv_text(diag_rows, diag_keys))
    buf = io.BytesIO()
    np.savez_compressed(buf, **units)  # keys "<layer>/<signal>" -> [units]
    atomic_write_bytes(directory / "units.npz", buf.getvalue())
    if tasks:
        atomic_write_bytes(directory / "curves.png", _plot(tasks, diag_rows))


def _plot(tasks: list[dict[str, Any]], diag_rows: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    t = [r["task"] for r in tasks]
    classification = tasks[0].get("online_accuracy") is not None
    ax = axes[0]
    if classification:
        ax.plot(t, [r["online_accuracy"] for r in tasks], label="online accuracy")
        ax.set_ylabel("online accuracy")
        ax.set_ylim(0, 1)
    else:
        ax.plot(t, [r["online_loss"] for r in tasks], label="online loss")
        ax.set_ylabel("online MSE")
    ax.set_xlabel("task")
    layers = sorted({r["layer"] for r in diag_rows})
    for key, ax in (("effective_rank", axes[1]), ("dead_ratio", axes[2])):
        for layer in layers:
            rows = [r for r in diag_rows if r["layer"] == layer]
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=layer)
        ax.set_xlabel("step")
        ax.set_ylabel(key.replace("_", " "))
        if layers:
            ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()

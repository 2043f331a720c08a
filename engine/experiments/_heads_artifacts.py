"""Run artifacts of the ``heads`` family: history, every decision with its scores, importance maps, samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.fsutil import atomic_write_bytes, atomic_write_text, csv_text


def write_heads_artifacts(directory: Path, history: list[dict[str, Any]], decisions: list[dict[str, Any]],
                          samples: list[dict[str, Any]], heads: dict[str, int]) -> None:
    """``history.csv``, ``decisions.json`` (every round with its scores), ``importance.png`` (one panel per
    round: importance per layer and head), ``samples.txt`` and ``heads.json`` (final heads per layer)."""
    keys = sorted({k for row in history for k in row}, key=lambda k: (k not in ("step", "phase"), k))
    atomic_write_text(directory / "history.csv", csv_text(history, keys))
    atomic_write_text(directory / "decisions.json", json.dumps(decisions, indent=1) + "\n")
    atomic_write_text(directory / "samples.txt",
                      "".join(f"=== step {s['step']} ({s['tag']}) ===\n{s['text']}\n\n" for s in samples))
    atomic_write_text(directory / "heads.json", json.dumps(heads, indent=2, sort_keys=True) + "\n")
    if decisions:
        atomic_write_bytes(directory / "importance.png", _plot(decisions))


def _plot(decisions: list[dict[str, Any]]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    shown = decisions[-6:]  # the last rounds: one heat map each (layers x heads)
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3), squeeze=False)
    for ax, d in zip(axes[0], shown):
        layers = sorted(d["importance"])
        width = max(len(d["importance"][a]["importance"]) for a in layers)
        grid = np.full((len(layers), width), np.nan)
        for i, a in enumerate(layers):
            vals = d["importance"][a]["importance"]
            grid[i, : len(vals)] = vals
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_title(f"step {d['step']}: {d['action']} ({d['outcome']})", fontsize=8)
        ax.set_yticks(range(len(layers)), [a.split(".")[1] for a in layers])
        ax.set_xlabel("head")
        ax.set_ylabel("block")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="importance (per-layer L2-normalised)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()

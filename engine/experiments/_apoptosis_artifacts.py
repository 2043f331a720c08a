"""Run artifacts of the ``apoptosis`` family: evaluation history, full lineage, text samples, curves."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from engine.fsutil import atomic_write_bytes, atomic_write_text, csv_text

LINEAGE_KEYS = ("group", "unit_id", "birth_step", "parent_id", "generation", "death_step", "cause")


def write_apoptosis_artifacts(directory: Path, history: list[dict[str, Any]], lineage: list[dict[str, Any]],
                              samples: list[dict[str, Any]], units: dict[str, int]) -> None:
    """``history.csv`` (one row per evaluation), ``lineage.csv`` (every unit ever alive), ``samples.txt``,
    ``units.json`` (final unit counts) and ``curves.png`` in ``directory``."""
    keys = sorted({k for row in history for k in row}, key=lambda k: (k not in ("step", "phase"), k))
    atomic_write_text(directory / "history.csv", csv_text(history, keys))
    atomic_write_text(directory / "lineage.csv", csv_text(lineage, list(LINEAGE_KEYS)))
    atomic_write_text(directory / "samples.txt",
                      "".join(f"=== step {s['step']} ({s['tag']}) ===\n{s['text']}\n\n" for s in samples))
    atomic_write_text(directory / "units.json", json.dumps(units, indent=2, sort_keys=True) + "\n")
    if history:
        atomic_write_bytes(directory / "curves.png", _plot(history, lineage))


def _plot(history: list[dict[str, Any]], lineage: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = [r["step"] for r in history]
    axes[0].plot(steps, [r["val_loss"] for r in history], label="val loss")
    deaths = sorted({r["death_step"] for r in lineage if r["death_step"] is not None and r["death_step"] >= 0})
    for s in deaths:
        axes[0].axvline(s, color="red", alpha=0.15, lw=0.8)
    axes[0].set_xlabel("step")
    axes[0].set_title("validation loss (red: death rounds)")
    for key in sorted(k for k in history[0] if k.startswith("units/")):
        axes[1].plot(steps, [r.get(key) for r in history], label=key[len("units/"):])
    axes[1].set_title("units per group")
    axes[1].legend(fontsize=6)
    gens: dict[int, int] = {}
    for r in lineage:
        if r["death_step"] is None or r["death_step"] < 0:
            gens[r["generation"]] = gens.get(r["generation"], 0) + 1
    axes[2].bar(list(gens), list(gens.values()))
    axes[2].set_title("alive units by generation")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()

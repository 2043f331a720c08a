"""Telemetry samples and artifacts of the neurogenesis family.

Artifacts: ``forgetting_matrix.csv`` (held-out error per class after each
stage), ``growth.csv`` (units per level per stage and added), ``thresholds.json``,
``reconstructions.png`` / ``replay_samples.png`` (one row per class) and
``error_curves.png`` (per-class error over stages).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.fsutil import atomic_write_bytes, atomic_write_text
from engine.telemetry.events import Sample

GRID_COLUMNS = 8  # images per class row in the PNG grids


def class_samples(errors: dict[int, float], baselines: dict[int, float]) -> list[Sample]:
    """Per-class held-out error and baseline of every seen class (labels: the class id)."""
    out = [Sample("ndl_class_reconstruction_error", (str(c),), e) for c, e in sorted(errors.items())]
    out += [Sample("ndl_class_baseline_error", (str(c),), b) for c, b in sorted(baselines.items())]
    return out


def stage_samples(exp: Any) -> list[Sample]:
    """Stage, class, per-level thresholds/errors/outliers/growth and the replay counter."""
    fam = exp.fam
    out = [Sample("ndl_stage", (), float(exp.stage)), Sample("ndl_current_class", (), float(exp.current_class)),
           Sample("ndl_outlier_fraction_limit_ratio", (), fam.max_outlier_fraction),
           Sample("ndl_replay_samples_total", (), float(exp.replay_total))]
    for i in range(exp.model.levels):
        name = (f"encoder.{i}",)
        out += [Sample("ndl_neurons_added_total", name, float(exp.total_added[i])),
                Sample("ndl_stage_neurons_added", name, float(exp.stage_added[i])),
                Sample("ndl_stage_growth_limit", name, float(fam.growth_cap if fam.neurogenesis else 0)),
                Sample("ndl_layer_reconstruction_error", name, exp.layer_error[i]),
                Sample("ndl_outlier_fraction_ratio", name, exp.outlier_frac[i])]
        if exp.thresholds.ready:
            out.append(Sample("ndl_layer_threshold", name, exp.thresholds.thresholds[i]))
    return out


def _csv(rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def forgetting_csv(history: list[dict[str, Any]], classes: list[int]) -> str:
    """One row per stage: stage, class learned, then the error of every class (blank: not seen)."""
    rows: list[list[Any]] = [["stage", "learned_class", *[f"class_{c}" for c in classes]]]
    for h in history:
        errs = {int(c): v for c, v in h["errors"].items()}
        rows.append([h["stage"], h["learned"], *[f"{errs[c]:.6f}" if c in errs else "" for c in classes]])
    return _csv(rows)


def growth_csv(history: list[dict[str, Any]]) -> str:
    """One row per stage and level: units after the stage and units added in it."""
    rows: list[list[Any]] = [["stage", "learned_class", "layer", "units", "added"]]
    for h in history:
        for i, (units, added) in enumerate(zip(h["sizes"], h["added"])):
            rows.append([h["stage"], h["learned"], f"encoder.{i}", units, added])
    return _csv(rows)


def _grid_png(rows: list[np.ndarray], labels: list[str], shape: tuple[int, int], title: str) -> bytes:
    """A PNG with one row of images per entry of ``rows`` ([k, h*w] each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows = max(len(rows), 1)
    fig, axes = plt.subplots(n_rows, GRID_COLUMNS, figsize=(GRID_COLUMNS * 0.9, n_rows * 0.95), squeeze=False)
    for r, (imgs, label) in enumerate(zip(rows, labels)):
        for col in range(GRID_COLUMNS):
            ax = axes[r][col]
            ax.axis("off")
            if col < len(imgs):
                ax.imshow(np.clip(imgs[col].reshape(shape), 0, 1), cmap="gray", vmin=0, vmax=1)
        axes[r][0].set_title(label, fontsize=7, loc="left")
    fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _curves_png(history: list[dict[str, Any]], classes: list[int], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for c in classes:
        pts = [(h["stage"], h["errors"][str(c)]) for h in history if str(c) in h["errors"]]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=str(c))
    ax.set_xlabel("stage (0 = base)")
    ax.set_ylabel("held-out reconstruction MSE")
    ax.set_title(title, fontsize=9)
    ax.legend(title="class", fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


@torch.no_grad()
def write_all(exp: Any, directory: Path) -> None:
    """Write every artifact of ``exp`` into ``directory``."""
    directory = Path(directory)
    classes = exp.all_classes
    variant = exp.variant
    atomic_write_text(directory / "forgetting_matrix.csv", forgetting_csv(exp.history, classes))
    atomic_write_text(directory / "growth.csv", growth_csv(exp.history))
    doc = {**exp.thresholds.state_dict(), "levels": [f"encoder.{i}" for i in range(exp.model.levels)],
           "max_outlier_fraction": exp.fam.max_outlier_fraction, "variant": variant}
    atomic_write_text(directory / "thresholds.json", json.dumps(doc, indent=2))
    seen = [c for c in classes if c in exp.seen]
    if not seen:
        return
    exp.model.eval()
    rows, labels = [], []
    for c in seen:
        x = exp.x_test[exp.y_test == c][: GRID_COLUMNS // 2]
        rec = exp.model(x)
        pair = torch.stack([x, rec], 1).reshape(-1, x.shape[1])  # original, reconstruction, ...
        rows.append(pair.cpu().numpy())
        labels.append(f"class {c}: original | reconstruction")
    atomic_write_bytes(directory / "reconstructions.png",
                       _grid_png(rows, labels, exp.shape, f"{variant}: held-out reconstructions"))
    gen = torch.Generator().manual_seed(0)  # artifacts never touch the run's generators
    rows, labels = [], []
    for c in exp.stats.classes:
        codes = exp.stats.sample(c, GRID_COLUMNS, gen).to(exp.device)
        rows.append(exp.model.decode_from(codes).cpu().numpy())
        labels.append(f"class {c}: replayed")
    if rows:
        atomic_write_bytes(directory / "replay_samples.png",
                           _grid_png(rows, labels, exp.shape, f"{variant}: intrinsic replay samples"))
    atomic_write_bytes(directory / "error_curves.png",
                       _curves_png(exp.history, classes, f"{variant}: per-class error after each stage"))

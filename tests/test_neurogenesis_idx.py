"""The IDX reader/writer and split finder (engine/data/idx.py), incl. real Fashion-MNIST files."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from engine.data.idx import find_split, load_idx_split, read_idx, write_idx
from engine.data.images import FASHION_MNIST_DIR, ImageDataConfig, load_images
from engine.errors import ConfigError


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_round_trip_plain_and_gzipped(tmp_path: Path, name: str, dtype: type) -> None:
    arr = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
    if dtype is np.uint8:
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / name, arr)
    raw = (tmp_path / name).read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == name.endswith(".gz")
    out = read_idx(tmp_path / name)
    assert out.shape == arr.shape and out.dtype == np.dtype(dtype) and np.array_equal(out, arr)


def test_gzip_is_detected_by_content_not_name(tmp_path: Path) -> None:
    arr = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "labels-idx1-ubyte", arr, compress=True)
    assert np.array_equal(read_idx(tmp_path / "labels-idx1-ubyte"), arr)


@pytest.mark.parametrize("cut", [1, 3, 10])
def test_truncated_or_padded_file_is_a_config_error(tmp_path: Path, cut: int) -> None:
    write_idx(tmp_path / "x-idx3-ubyte", np.zeros((4, 5, 5), dtype=np.uint8))
    raw = (tmp_path / "x-idx3-ubyte").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-cut])
    with pytest.raises(ConfigError, match="bytes for shape"):
        read_idx(tmp_path / "short")
    (tmp_path / "long").write_bytes(raw + b"\0" * cut)
    with pytest.raises(ConfigError):
        read_idx(tmp_path / "long")
    (tmp_path / "header").write_bytes(raw[:6])
    with pytest.raises(ConfigError):
        read_idx(tmp_path / "header")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(raw)[:-cut - 8])
    with pytest.raises(ConfigError):
        read_idx(tmp_path / "bad.gz")
    (tmp_path / "magic").write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(ConfigError, match="magic"):
        read_idx(tmp_path / "magic")


def _write_split(directory: Path, images: str, labels: str, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).integers(0, 255, (n, 4, 4), dtype=np.uint8)
    y = (np.arange(n) % 3).astype(np.uint8)
    write_idx(directory / images, x)
    write_idx(directory / labels, y)
    return x, y


@pytest.mark.parametrize(("split", "images", "labels"), [
    ("train", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    ("test", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ("test", "emnist-letters-test-images-idx3-ubyte.gz", "emnist-letters-test-labels-idx1-ubyte.gz"),
    ("train", "emnist-letters-train-images-idx3-ubyte", "emnist-letters-train-labels-idx1-ubyte"),
    ("train", "train-images.idx3-ubyte", "train-labels.idx1-ubyte"),
])
def test_find_split_standard_and_emnist_names(tmp_path: Path, split: str, images: str, labels: str) -> None:
    x, y = _write_split(tmp_path, images, labels)
    other = "t10k" if split == "train" else "train"
    _write_split(tmp_path, f"{other}-images-idx3-ubyte", f"{other}-labels-idx1-ubyte", n=3)
    assert find_split(tmp_path, split) == (tmp_path / images, tmp_path / labels)
    got_x, got_y, sha = load_idx_split(tmp_path, split)
    assert np.array_equal(got_x, x) and np.array_equal(got_y, y) and len(sha) == 64


def test_missing_files_and_mismatched_lengths_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="existing directory"):
        find_split(tmp_path / "nope", "train")
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2), dtype=np.uint8))
    with pytest.raises(ConfigError, match="labels"):
        find_split(tmp_path, "train")
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8))
    with pytest.raises(ConfigError, match="matching"):
        load_idx_split(tmp_path, "train")


def test_idx_dataset_through_the_image_loader(tmp_path: Path) -> None:
    x, y = _write_split(tmp_path, "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", n=9)
    images = load_images(ImageDataConfig(dataset="idx", data_dir=tmp_path), seed=0)
    assert images.shape == (4, 4) and images.x.shape == (9, 16) and images.classes == [0, 1, 2]
    assert np.allclose(images.x, x.reshape(9, 16) / 255.0)
    assert images.manifest()["sha256"] == load_idx_split(tmp_path, "train")[2]


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir() and os.environ.get("CI") != "true",
                    reason="Debian's dataset-fashion-mnist is not installed (required under CI=true)")
def test_real_fashion_mnist_files() -> None:
    train_x, train_y, sha = load_idx_split(FASHION_MNIST_DIR, "train")
    assert train_x.shape == (60000, 28, 28) and train_y.shape == (60000,)
    assert sorted(np.unique(train_y).tolist()) == list(range(10)) and len(sha) == 64
    test_x, test_y, _ = load_idx_split(FASHION_MNIST_DIR, "test")
    assert test_x.shape == (10000, 28, 28) and np.bincount(test_y).tolist() == [1000] * 10
    images = load_images(ImageDataConfig(dataset="idx", data_dir=FASHION_MNIST_DIR, idx_split="test",
                                         per_class=20), seed=0)
    assert images.x.shape == (200, 784) and 0.0 <= images.x.min() and images.x.max() <= 1.0

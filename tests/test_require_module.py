"""conftest.require_module: optional Python packages skip locally and fail under CI=true."""

from __future__ import annotations

import json

import pytest
from conftest import require_module

MISSING = "no_such_module_for_plasticity_tests"


@pytest.mark.parametrize("ci", ["true", "TRUE"])
def test_missing_module_fails_under_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=r"pip install no-such-dist.*CI=true"):
        require_module(MISSING, "no-such-dist")


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_missing_module_skips_with_an_install_hint_elsewhere(monkeypatch: pytest.MonkeyPatch,
                                                             ci: str | None) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match=f"{MISSING}.*pip install {MISSING}"):
        require_module(MISSING)


def test_present_module_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert require_module("json") is json

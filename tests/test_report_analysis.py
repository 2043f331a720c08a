"""Sweep statistics of the reports (engine.report.analysis): pure functions, no files."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from engine.report import analysis as an


def test_cells_parse_to_numbers_flags_or_text() -> None:
    assert [an.parse_cell(v) for v in ("3", "0.5", "1e-3", "True", "false", " sgd ", "")] == \
        [3, 0.5, 1e-3, True, False, "sgd", ""]
    assert an.finite("0.25") == 0.25
    assert [an.finite(v) for v in ("nan", "inf", "", "adam", True, None)] == [None] * 6


def test_varied_keys_and_categorical_values() -> None:
    params = [{"lr": "0.1", "opt": "adam", "seed": "1", "n": "8"},
              {"lr": "0.01", "opt": "sgd", "seed": "2", "n": "8"}]
    assert an.varied(params) == ["lr", "opt", "seed"]
    assert an.is_categorical(["adam", "sgd"]) and an.is_categorical(["True", "False"])
    assert not an.is_categorical(["0.1", "3", ""])
    assert sorted(["10", "9", "b", "a", "0.5"], key=an.sort_key) == ["0.5", "9", "10", "a", "b"]


def test_stability_is_the_variance_of_the_last_window() -> None:
    values = [100.0, 50.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert an.tail_variance(values, window=5) == pytest.approx(np.var([1, 2, 3, 4, 5], ddof=1))
    assert an.tail_variance([1.0, 1.0, 1.0]) == 0.0
    assert an.tail_variance([2.0]) is None and an.tail_variance([]) is None


def test_top_k_skips_missing_and_keeps_order_of_ties() -> None:
    items = [{"id": i, "v": v} for i, v in enumerate([0.3, None, 0.1, 0.3, 0.2])]
    key = lambda d: d["v"]  # noqa: E731
    assert [d["id"] for d in an.top(items, key, k=3)] == [2, 4, 0]
    assert [d["id"] for d in an.top(items, key, k=2, descending=True)] == [0, 3]


def test_bootstrap_ci_brackets_the_mean_and_is_reproducible() -> None:
    data = [0.61, 0.64, 0.70, 0.58, 0.66, 0.69]
    low, high = an.bootstrap_ci(data)
    assert low < float(np.mean(data)) < high
    assert min(data) <= low and high <= max(data)
    assert an.bootstrap_ci(data) == (low, high)  # fixed resampling seed
    assert an.bootstrap_ci([0.5]) is None
    assert an.bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)  # no spread: the interval is the value


def test_welch_matches_scipy_and_is_none_where_undefined() -> None:
    a, b = [0.70, 0.72, 0.69, 0.71], [0.60, 0.65, 0.62]
    res = an.welch("x", a, "y", b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert res is not None and (res.a, res.b) == ("x", "y")
    assert res.statistic == pytest.approx(ref.statistic) and res.pvalue == pytest.approx(ref.pvalue)
    assert an.welch("x", [0.5], "y", b) is None  # one trial in a group
    assert an.welch("x", [1.0, 1.0], "y", [2.0, 2.0]) is None  # no spread anywhere


def test_group_stats_and_comparison_of_the_two_best_groups() -> None:
    groups = {"sgd": [0.9, 0.8], "adam": [0.5, 0.6, 0.55], "rms": [0.7], "none": [math.nan]}
    got = an.group_stats(groups)
    assert [g.value for g in got] == ["adam", "rms", "sgd"]  # text order; a group without a value dropped
    adam = got[0]
    assert (adam.n, adam.low, adam.high) == (3, 0.5, 0.6)
    assert adam.mean == pytest.approx(0.55) and adam.std == pytest.approx(0.05)
    assert adam.ci is not None and adam.ci[0] <= 0.55 <= adam.ci[1]
    assert got[1].std == 0.0 and got[1].ci is None  # one trial: no spread, no interval
    lower = an.compare(groups, got, lower_is_better=True)
    assert lower is not None and (lower.a, lower.b) == ("adam", "sgd")  # rms has one trial: untestable
    higher = an.compare(groups, got, lower_is_better=False)
    assert higher is not None and (higher.a, higher.b) == ("sgd", "adam")
    assert an.compare({"a": [1.0]}, an.group_stats({"a": [1.0]}), True) is None


def test_best_per_value_picks_each_values_best_trial() -> None:
    trials = [{"m": "cbp", "loss": 0.4}, {"m": "cbp", "loss": 0.3}, {"m": "redo", "loss": 0.5},
              {"m": "redo", "loss": None}, {"m": "none", "loss": None}]
    best = an.best_per_value(trials, lambda t: t["m"], lambda t: t["loss"], lower_is_better=True)
    assert best == {"cbp": trials[1], "redo": trials[2]}
    best = an.best_per_value(trials, lambda t: t["m"], lambda t: t["loss"], lower_is_better=False)
    assert best["cbp"] is trials[0]

"""Sweep statistics (pure: values in, numbers out; no files, no rendering).

Trials are compared on their final figures (``val_loss``: lower is better;
``val_accuracy``: higher is better) and on their stability, the variance of
their loss over the last :data:`STABILITY_WINDOW` epochs. Trials grouped by a
parameter (e.g. ``lr``) give, per group, the mean, spread and a bootstrap
confidence interval of the mean over its trials (which differ by seed and the
other parameters); two groups are compared with Welch's t-test.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

#: Epochs at the end of a trial's history whose loss variance measures its stability.
STABILITY_WINDOW = 5


def parse_cell(value: Any) -> Any:
    """A CSV cell as int, float or bool where it is one, else the stripped string."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def finite(value: Any) -> float | None:
    """``value`` (a number or numeric string) as a finite float, else None."""
    value = parse_cell(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def varied(params: Sequence[dict[str, Any]]) -> list[str]:
    """Keys whose value differs between some of ``params`` (in first-seen order)."""
    keys = list(dict.fromkeys(k for p in params for k in p))
    return [k for k in keys if len({str(p.get(k)) for p in params}) > 1]


def is_categorical(values: Iterable[Any]) -> bool:
    """Whether some value is neither a number nor empty (a strategy, a mechanism, a flag)."""
    parsed = [parse_cell(v) for v in values if str(v) != ""]
    return any(isinstance(v, (bool, str)) for v in parsed)


def sort_key(value: Any) -> tuple[int, Any]:
    """Order parameter values: numbers numerically, then the rest as text."""
    parsed = parse_cell(value)
    if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
        return (0, float(parsed))
    return (1, str(parsed))


def tail_variance(values: Sequence[float], window: int = STABILITY_WINDOW) -> float | None:
    """Sample variance of the last ``window`` values (None with fewer than two)."""
    tail = [v for v in values[-window:] if math.isfinite(v)]
    if len(tail) < 2:
        return None
    return float(np.var(tail, ddof=1))


def top(items: Sequence[Any], key: Callable[[Any], float | None], k: int = 10,
        descending: bool = False) -> list[Any]:
    """The ``k`` best of ``items`` by ``key`` (items whose key is None are left out)."""
    scored = [(v, i) for i, item in enumerate(items) if (v := key(item)) is not None]
    scored.sort(key=lambda t: (-t[0] if descending else t[0], t[1]))
    return [items[i] for _, i in scored[:k]]


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of the mean (None with fewer than two values)."""
    data = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if data.size < 2:
        return None
    if np.ptp(data) == 0:  # every resample has the same mean
        return float(data[0]), float(data[0])
    from scipy.stats import bootstrap

    res = bootstrap((data,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                    method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@dataclass(frozen=True)
class Welch:
    """Welch's unequal-variance t-test of two groups."""

    a: str
    b: str
    statistic: float
    pvalue: float


def welch(a_name: str, a: Sequence[float], b_name: str, b: Sequence[float]) -> Welch | None:
    """Welch's t-test of ``a`` against ``b`` (None when a group has fewer than two values
    or neither group varies, where the test is undefined)."""
    xa = [v for v in a if math.isfinite(v)]
    xb = [v for v in b if math.isfinite(v)]
    if len(xa) < 2 or len(xb) < 2 or (np.ptp(xa) == 0 and np.ptp(xb) == 0):
        return None
    from scipy.stats import ttest_ind

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = ttest_ind(xa, xb, equal_var=False)
    return Welch(a_name, b_name, float(res.statistic), float(res.pvalue))


@dataclass(frozen=True)
class Group:
    """The trials sharing one value of a parameter, summarised on one metric."""

    value: str
    n: int
    mean: float
    std: float
    low: float
    high: float
    ci: tuple[float, float] | None


def group_stats(groups: dict[str, list[float]], confidence: float = 0.95) -> list[Group]:
    """Per group: count, mean, sample spread (0 for one value), range and bootstrap CI of the mean.

    Groups without a finite value are left out; order is :func:`sort_key` of the value.
    """
    out = []
    for value in sorted(groups, key=sort_key):
        data = [v for v in groups[value] if math.isfinite(v)]
        if not data:
            continue
        std = float(np.std(data, ddof=1)) if len(data) > 1 else 0.0
        out.append(Group(value, len(data), float(np.mean(data)), std, min(data), max(data),
                         bootstrap_ci(data, confidence)))
    return out


def compare(groups: dict[str, list[float]], stats: Sequence[Group], lower_is_better: bool) -> Welch | None:
    """Welch's test between the two best groups by mean among those with two or more values
    (the only two, when there are two)."""
    ranked = sorted((g for g in stats if g.n >= 2), key=lambda g: g.mean if lower_is_better else -g.mean)
    if len(ranked) < 2:
        return None
    a, b = ranked[0].value, ranked[1].value
    return welch(a, groups[a], b, groups[b])


def best_per_value(items: Sequence[Any], value_of: Callable[[Any], str],
                   score: Callable[[Any], float | None], lower_is_better: bool) -> dict[str, Any]:
    """For each value of a parameter, the item with the best score (values without a score left out)."""
    best: dict[str, tuple[float, Any]] = {}
    for item in items:
        s = score(item)
        if s is None:
            continue
        v = value_of(item)
        key = s if lower_is_better else -s
        if v not in best or key < best[v][0]:
            best[v] = (key, item)
    return {v: best[v][1] for v in sorted(best, key=sort_key)}

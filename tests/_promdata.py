"""What a real Prometheus has stored for a run: tests wait on its samples, not on the clock.

A dashboard panel is a range query evaluated at steps ``start, start+1s, ...``;
``rate(x[4s])`` at step T needs two samples of ``x`` inside ``[T-4s, T]``. A test
that ends its range at the first scrape of a run's final state silently assumes
the run was scraped often enough before that, which only holds on a quiet
machine: a run that is fast (or whose scrapes Prometheus delays) leaves a
series first exported late in the run (a counter created at its first
increment, say) with a single sample, and every ``rate`` panel on it empty.

Tests use these helpers to wait for what the panels need instead:
:func:`wait_until_settled` waits until every series of the run has enough
samples inside the widest range selector ending at a range-query step (the
engine keeps serving its final state during ``--metrics_hold``), and
:func:`seen_increase` tells whether Prometheus saw a counter grow between two
scrapes close enough together for a panel's window to hold both.

Only the standard library is used, so this module does not depend on the
end-to-end test modules (which other tests import it next to).
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from _e2e import Proc, wait_for

from monitoring.stack_config import seconds as duration_seconds

#: Range-query resolution the dashboard tests use (``step=1``), in seconds.
STEP = 1.0
#: ``[4s]``, ``[$__rate_interval]`` after substitution, or a subquery's ``[5m:1s]``.
_RANGE = re.compile(r"\[\s*(\d+(?:ms|s|m|h|d|w|y)(?:\d+(?:ms|s|m|h|d|w|y))*)\s*(?::[^\]]*)?\]")

LabelSet = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Series:
    """Raw samples of one series, as Prometheus stored them (oldest first)."""

    labels: dict[str, str]
    samples: list[tuple[float, float]]  # (unix seconds, value)

    @property
    def key(self) -> LabelSet:
        return _key(self.labels)


def _key(labels: dict[str, str]) -> LabelSet:
    return tuple(sorted(labels.items()))


def _api(prometheus: str, path: str, **params: str) -> Any:
    """GET a Prometheus HTTP API path; its ``data`` (fails unless status is success)."""
    url = f"{prometheus}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        doc = json.loads(resp.read())
    assert doc["status"] == "success", doc
    return doc["data"]


def widest_range(exprs: Iterable[str], default: float) -> float:
    """Seconds of the widest range selector in ``exprs`` (PromQL with variables
    substituted); ``default`` if none has one."""
    widths = [duration_seconds(m.group(1)) for e in exprs for m in _RANGE.finditer(e)]
    return max(widths, default=default)


def last_step(begin: float, now: float, step: float = STEP) -> float:
    """The latest range-query step ``begin + k * step`` that is not after ``now``.

    A range query from ``begin`` evaluates only at these instants, so a
    condition checked at this one is what the query's last step sees.
    """
    return begin + step * math.floor((now - begin) / step)


def raw_samples(prometheus: str, selector: str, at: float, window: float) -> list[Series]:
    """Every sample Prometheus holds for ``selector`` in ``[at - window, at]``."""
    data = _api(prometheus, "/api/v1/query", query=f"{selector}[{round(window * 1000)}ms]", time=f"{at:.3f}")
    assert data["resultType"] == "matrix", data
    return [Series(dict(s["metric"]), [(float(t), float(v)) for t, v in s["values"]]) for s in data["result"]]


def exposed(prometheus: str, selector: str, at: float) -> set[LabelSet]:
    """Label sets of the series of ``selector`` that are current at ``at`` (not
    marked stale: a series the target stopped exporting drops out)."""
    data = _api(prometheus, "/api/v1/query", query=selector, time=f"{at:.3f}")
    return {_key(s["metric"]) for s in data["result"]}


def short_of_samples(prometheus: str, selector: str, at: float, window: float, samples: int) -> list[str]:
    """Series of ``selector`` current at ``at`` with fewer than ``samples`` samples
    in ``[at - window, at]`` (all of them, by name, if none is current)."""
    current = exposed(prometheus, selector, at)
    if not current:
        return [f"no series of {selector} at {at:.3f}"]
    counts = {s.key: len(s.samples) for s in raw_samples(prometheus, selector, at, window)}
    return sorted(f"{dict(k).get('__name__')}{{...}}: {counts.get(k, 0)} sample(s)"
                  for k in current if counts.get(k, 0) < samples)


def wait_until_settled(prometheus: str, selector: str, begin: float, window: float, *, samples: int = 2,
                       timeout: float = 60, proc: Proc | None = None) -> float:
    """Wait until every current series of ``selector`` has ``samples`` samples in
    the ``window`` seconds up to a range-query step; return that step.

    With ``window`` the widest range selector of the panels, ``rate``,
    ``increase`` and ``changes`` then have data at the returned step for every
    series the run still exports, however few scrapes the run itself got. The
    target must keep serving (``--metrics_hold``) while this waits.
    """
    missing: list[str] = []

    def settled() -> float | None:
        nonlocal missing
        at = last_step(begin, time.time())
        missing = short_of_samples(prometheus, selector, at, window, samples)
        return None if missing else at

    try:
        return wait_for(f"{samples} samples of every series of {selector} within {window:g}s", settled,
                        timeout=timeout, interval=0.25, proc=proc)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still short: {missing[:10]}") from None


def seen_increase(series: Series, max_gap: float) -> bool:
    """Whether two consecutive samples at most ``max_gap`` seconds apart show the value growing.

    A change between samples at t1 < t2 appears in a window of width W
    evaluated at the first step T >= t2 (so T < t2 + step) only if t1 >= T - W;
    ``max_gap = W - step`` guarantees that.
    """
    pairs = zip(series.samples, series.samples[1:])
    return any(v2 > v1 and t2 - t1 <= max_gap for (t1, v1), (t2, v2) in pairs)


def history(prometheus: str, selector: str, start: float, end: float) -> list[Series]:
    """Every sample of ``selector`` between ``start`` and ``end``."""
    return raw_samples(prometheus, selector, end, end - start)

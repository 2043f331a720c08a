"""Every Grafana panel query returns data from a real Prometheus that scraped a real healthy run.

No Grafana server can run here, so the dashboards' PromQL is executed the way
Grafana would send it: variables replaced by :func:`monitoring.dashboards.substitute`
(the run's ``run_id``, job ``engine``, ``$__rate_interval`` = 4 scrape
intervals as Grafana computes it), as a range query over the run's lifetime
at the 1 s scrape interval. Each query must return at least one series with a
finite value.

The range ends only once Prometheus holds what the panels need, whatever the
machine's load (:mod:`_promdata`): every series of the run has two samples
inside the widest panel window (the endpoint keeps serving the final state),
and Prometheus saw the run's epochs and germinations grow between scrapes
close enough together for a ``rate``/``changes`` window; a run it did not
see train is repeated (a few times at most) instead of failing its panels.

Queries on ``ALERTS`` are the exception: nothing fires for a healthy run, so
here they must only be valid (status success); the end-to-end alerting test
runs the same panel queries while LossNonFinite fires and requires data.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _e2e import ROOT, Proc, read_json, run_dir_in, start, stop, wait_for
from _promdata import STEP, history, seen_increase, wait_until_settled, widest_range
from binaries import duration_seconds
from test_e2e_alerting import QUIET, Stack, get_json, local_stack, query

from monitoring.dashboards import (
    FAMILY_DASHBOARDS,
    annotation_queries,
    panel_queries,
    substitute,
    variable_queries,
)

# The experiment families' dashboards chart their own family's metrics: they
# are checked against runs of those families (test_dashboard_queries_families.py).
DASHBOARDS = sorted(p for p in (ROOT / "grafana" / "dashboards").glob("*.json") if p.stem not in FAMILY_DASHBOARDS)
RATE_INTERVAL = "4s"  # Grafana: max(4 x scrape interval, interval + scrape interval) at a 1 s scrape


@dataclass
class ScrapedRun:
    stack: Stack
    run_id: str
    start: float  # unix seconds: the run was started
    end: float  # unix seconds: a range-query step (from start) at which every series has settled


#: Attempts at a run whose progress Prometheus saw (see PROGRESS) before the fixture gives up.
ATTEMPTS = 3
#: Counters whose growth between two scrapes the rate-of-change panels need: the
#: epoch-duration quantiles and mean step time are 0/0 (NaN) over a window in
#: which no epoch ended, and the germinations panel is ``changes(...) > 0``. A
#: settled final state cannot provide that; only scrapes taken while the run
#: trained can, so a run that trained between two scrapes (a fast machine, or
#: a loaded one delaying scrapes) is repeated rather than reported as empty panels.
PROGRESS = ("plasticity_epochs_total", "plasticity_germinations_total", "plasticity_rollbacks_total")
#: A NaN drill answered by a rollback late in the run (epoch 72 of 80, after
#: Prometheus has been scraping for seconds): the Rollbacks panel and
#: annotation need one; the run still trains to the end.
ROLLBACK = ["--fault_nan_step", "1800", "--on_diverge", "rollback"]


def _queries() -> list[tuple[str, str, str]]:
    out = []
    for path in DASHBOARDS:
        doc = json.loads(path.read_text())
        out += panel_queries(doc) + [(uid, f"annotation {name}", e) for uid, name, e in annotation_queries(doc)]
    return out


QUERIES = _queries()
#: The widest range selector of any panel once Grafana's variables are substituted.
WINDOW = widest_range((substitute(e, {"run": "r", "job": "engine", "__rate_interval": RATE_INTERVAL})
                       for _u, _t, e in QUERIES), default=duration_seconds(RATE_INTERVAL))


def _observe_run(stack: Stack, proc: Proc, out: Path, begin: float) -> tuple[ScrapedRun, list[str]]:
    """Wait until Prometheus holds the settled final state of the run ``proc``
    (started at ``begin``, writing under ``out``); also return the PROGRESS
    counters Prometheus did not see grow (empty: the run is usable)."""
    run_dir = wait_for("the run dir", lambda: run_dir_in(out), timeout=60, proc=proc)
    run_id = wait_for("run_id", lambda: (read_json(run_dir / "metrics.json") or {}).get("run_id"),
                      timeout=60, proc=proc)
    selector = f'plasticity_run_status{{job="engine", run_id="{run_id}"'
    wait_for("the first scrape", lambda: query(stack.prometheus, selector + "}"), timeout=30, proc=proc)
    wait_for("the finished run scraped", lambda: query(stack.prometheus, selector + ', status="finished"} == 1'),
             timeout=90, interval=0.2, proc=proc)
    # The run has ended, but a series it created late may have a single sample:
    # wait (the endpoint holds the final state) until every series has two
    # samples inside the widest panel window, at a step the range queries hit.
    run = f'{{job="engine", run_id="{run_id}"}}'
    end = wait_until_settled(stack.prometheus, run, begin, WINDOW, proc=proc)
    unseen = [name for name in PROGRESS
              if not any(seen_increase(s, WINDOW - STEP)
                         for s in history(stack.prometheus, f"{name}{run}", begin, end))]
    return ScrapedRun(stack, run_id, begin, end), unseen


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScrapedRun]:
    """A default run (germinating seeds, one rollback) scraped every second until its final state settled."""
    tmp = tmp_path_factory.mktemp("dashboards")
    unseen_by_attempt: list[list[str]] = []
    for attempt in range(1, ATTEMPTS + 1):
        # A fresh Prometheus per attempt: its label-values API would still list
        # an abandoned run (the head block does not filter series by time).
        with local_stack(tmp / f"stack{attempt}") as stack:
            proc: Proc | None = None
            try:
                out = tmp / f"out{attempt}"
                begin = time.time()
                proc = start([*QUIET, *ROLLBACK, "--output_dir", str(out), "--metrics_port",
                              str(stack.engine_port), "--metrics_hold", "60"], tmp / f"logs{attempt}")
                run, unseen = _observe_run(stack, proc, out, begin)
                if not unseen:
                    yield run
                    return
                unseen_by_attempt.append(unseen)
            finally:
                stop(proc)
    pytest.fail(f"in {ATTEMPTS} runs Prometheus never saw {unseen_by_attempt} grow between two scrapes "
                f"at most {WINDOW - STEP:g}s apart (the machine is too loaded for 1 s scrapes, or the "
                f"run no longer trains/germinates)")


def test_every_dashboard_has_queries() -> None:
    assert {p.stem for p in DASHBOARDS} >= {"plasticity-overview", "plasticity-seeds", "plasticity-system"}
    assert len(QUERIES) >= 30, len(QUERIES)


def query_range(prometheus: str, expr: str, start: float, end: float) -> dict[str, Any]:
    params = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                     "step": f"{STEP:g}"})
    return dict(get_json(prometheus, f"/api/v1/query_range?{params}"))


def finite_points(result: list[dict[str, Any]]) -> int:
    """Finite sample values over every series of a range-query result."""
    return sum(math.isfinite(float(v)) for s in result for _t, v in s["values"])


@pytest.mark.parametrize("uid,title,expr", QUERIES, ids=[f"{u}:{t}:{i}" for i, (u, t, _e) in enumerate(QUERIES)])
def test_panel_query_returns_data(scraped: ScrapedRun, uid: str, title: str, expr: str) -> None:
    promql = substitute(expr, {"run": scraped.run_id, "job": "engine", "__rate_interval": RATE_INTERVAL})
    doc = query_range(scraped.stack.prometheus, promql, scraped.start, scraped.end)
    assert doc["status"] == "success", doc
    if "ALERTS" in expr:
        return  # valid; data is required by test_e2e_alerting, where an alert fires
    assert finite_points(doc["data"]["result"]) > 0, f"{uid} / {title}: no data for {promql}"


def test_a_query_for_another_run_returns_nothing(scraped: ScrapedRun) -> None:
    # The check above can fail: the same query for a run that never existed has no data.
    expr = next(e for _u, t, e in QUERIES if t == "Loss")
    doc = query_range(scraped.stack.prometheus, substitute(expr, {"run": "0000000000", "job": "engine"}),
                      scraped.start, scraped.end)
    assert doc["status"] == "success" and finite_points(doc["data"]["result"]) == 0


def test_template_variables_list_the_run(scraped: ScrapedRun) -> None:
    values: dict[str, list[str]] = {}
    current = {"job": "engine", "sweep": ".*", "run": scraped.run_id}
    for path in DASHBOARDS:
        for name, text in variable_queries(json.loads(path.read_text())):
            inner = substitute(text, current).removeprefix("label_values(").removesuffix(")")
            selector, label = (part.strip() for part in inner.rsplit(",", 1))
            params = urllib.parse.urlencode({"match[]": selector, "start": f"{scraped.start:.3f}"})
            doc = get_json(scraped.stack.prometheus, f"/api/v1/label/{label}/values?{params}")
            assert doc["status"] == "success", doc
            values[name] = doc["data"]
    assert values["job"] == ["engine"] and values["run"] == [scraped.run_id]
    assert values["layer"] and values["sweep"] == [] and values["trial"] == []  # a single run has no sweep labels

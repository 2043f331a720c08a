"""Every Grafana panel query returns data from a real Prometheus that scraped a real healthy run.

No Grafana server can run here, so the dashboards' PromQL is executed the way
Grafana would send it: variables replaced by :func:`monitoring.dashboards.substitute`
(the run's ``run_id``, job ``engine``, ``$__rate_interval`` = 4 scrape
intervals as Grafana computes it), as a range query over the run's lifetime
at the 1 s scrape interval. Each query must return at least one series with a
finite value.

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
from typing import Any

import pytest
from _e2e import ROOT, Proc, read_json, run_dir_in, start, stop, wait_for
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
    end: float  # unix seconds: the run's final state was scraped


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScrapedRun]:
    """A default run (germinating seeds) scraped every second until its final state."""
    tmp = tmp_path_factory.mktemp("dashboards")
    proc: Proc | None = None
    with local_stack(tmp / "stack") as stack:
        try:
            out = tmp / "out"
            begin = time.time()
            proc = start([*QUIET, "--output_dir", str(out), "--metrics_port", str(stack.engine_port),
                          "--metrics_hold", "60"], tmp / "logs")
            run_dir = wait_for("the run dir", lambda: run_dir_in(out), timeout=60, proc=proc)
            run_id = wait_for("run_id", lambda: (read_json(run_dir / "metrics.json") or {}).get("run_id"),
                              timeout=60, proc=proc)
            selector = f'plasticity_run_status{{job="engine", run_id="{run_id}"'
            wait_for("the first scrape", lambda: query(stack.prometheus, selector + "}"), timeout=30, proc=proc)
            wait_for("the finished run scraped", lambda: query(stack.prometheus, selector + ', status="finished"} == 1'),
                     timeout=90, interval=0.2, proc=proc)
            yield ScrapedRun(stack, run_id, begin, time.time())
        finally:
            stop(proc)


def _queries() -> list[tuple[str, str, str]]:
    out = []
    for path in DASHBOARDS:
        doc = json.loads(path.read_text())
        out += panel_queries(doc) + [(uid, f"annotation {name}", e) for uid, name, e in annotation_queries(doc)]
    return out


QUERIES = _queries()


def test_every_dashboard_has_queries() -> None:
    assert {p.stem for p in DASHBOARDS} >= {"plasticity-overview", "plasticity-seeds", "plasticity-system"}
    assert len(QUERIES) >= 30, len(QUERIES)


def query_range(prometheus: str, expr: str, start: float, end: float) -> dict[str, Any]:
    params = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "1"})
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

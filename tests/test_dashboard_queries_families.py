"""Every panel query of the family dashboards returns data from a real Prometheus
that scraped a real short run of that family.

One Prometheus (the shipped config and rules, 1 s scrape and evaluation, one
static ``engine`` target per family) scrapes a tiny ``neurogenesis`` run (8x8
digits, base classes 1 and 7, one new class, growth and replay on), a tiny
``plasticity`` run (6 permuted-digit tasks, continual backprop), a tiny
``apoptosis`` run (a 2-block char transformer on 20,000 characters of the
committed Shakespeare slice, then a short domain shift to verse; units die
and regrow every 10 steps; nothing is downloaded) and a tiny ``heads`` run
(the same model with 4 heads per block on the slice; warm-up stable after a
few evaluations, then a pruning round every 30 steps)
running side by side. Each dashboard's queries are executed the way Grafana sends them
(:func:`monitoring.dashboards.substitute` with the run's ``run_id``, job
``engine``, ``$__rate_interval`` = 4 s) as range queries over the run's
lifetime, and each must return at least one finite value (queries on
``ALERTS`` only need to be valid: nothing fires for a healthy run). Template
variables must list the run and its layers.

A run's range ends only once Prometheus holds what the panels need
(:func:`_promdata.wait_until_settled`): the counters a run creates in its last
stage (neurons added, replayed samples) would otherwise have a single sample
when the finished state is first scraped, and their ``rate``/``increase``
panels no data, on any machine fast or loaded enough.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from _char import SLICE, TINY_HEADS
from _e2e import ROOT, Proc, read_json, run_dir_in, start, stop, wait_for
from _promdata import STEP, wait_until_settled, widest_range
from binaries import duration_seconds, require_binary
from conftest import free_port
from test_e2e_alerting import FAST, QUIET, get_json, query

from monitoring import stack as ms
from monitoring.dashboards import (
    FAMILY_DASHBOARDS,
    panel_queries,
    substitute,
    variable_queries,
)

RATE_INTERVAL = "4s"  # Grafana: 4 x the 1 s scrape interval
COMMON = [*QUIET, "--threads", "1", "--metrics_hold", "60"]
#: Small, fast settings of each family (a few seconds of training each).
RUNS: dict[str, list[str]] = {
    "neurogenesis": ["--experiment", "neurogenesis", "--dataset", "digits8", "--base_epochs", "3",
                     "--class_order", "0", "--plasticity_epochs", "2", "--stability_epochs", "2", "--eval_every", "5"],
    "plasticity": ["--experiment", "plasticity", "--dataset", "digits8", "--n_tasks", "6", "--hidden_units", "16",
                   "--hidden_layers", "2", "--diagnostics_every", "20", "--probe_size", "200", "--mechanism", "cbp"],
    # Deaths every 10 steps from step 20 on, for a few seconds of training: the
    # deaths-per-step panel (a ratio of rates) needs both counters to grow
    # inside one rate window while Prometheus scrapes.
    "apoptosis": ["--experiment", "apoptosis", "--text_file", SLICE, "--max_chars", "20000", "--n_layer", "2",
                  "--n_embd", "32", "--n_head", "2", "--block_size", "16", "--max_iters", "300", "--shift_iters", "40",
                  "--eval_every", "20", "--eval_iters", "2", "--apoptosis_strategy", "standard",
                  "--prune_interval", "10", "--apoptosis_start", "20", "--maturity_steps", "10",
                  "--sample_chars", "40", "--sample_every", "20"],
    # Pruning rounds every 30 steps once warm-up is stable (from step ~30): the per-head
    # importance and entropy panels need at least one round inside the run.
    "heads": [*TINY_HEADS, "--max_iters", "200"],
}
#: Corpus B of the apoptosis run's domain shift (written next to the run).
POEMS = "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n" * 120
#: A metric name part only each family's dashboard charts (checked empty for another family's run).
OWN = {"neurogenesis": "ndl_", "plasticity": "layer_effective_rank", "apoptosis": "apoptosis_", "heads": "heads_"}
#: Layer label prefix of each family.
LAYERS = {"neurogenesis": "encoder.", "plasticity": "layers.", "apoptosis": "blocks.", "heads": "blocks."}


@dataclass
class ScrapedRun:
    prometheus: str
    run_id: str
    start: float  # unix seconds: the runs were started
    end: float  # unix seconds: a range-query step (from start) at which every series of the run has settled


def _dashboard(uid: str) -> dict[str, Any]:
    return dict(json.loads((ROOT / "grafana" / "dashboards" / f"{uid}.json").read_text()))


def _run_id(output_dir: Path, proc: Proc) -> str:
    """run_id of the single run under ``output_dir`` (waits for its metrics.json)."""
    run_dir = wait_for("the run dir", partial(run_dir_in, output_dir), timeout=60, proc=proc)
    path = run_dir / "metrics.json"
    return str(wait_for("the run_id", lambda: (read_json(path) or {}).get("run_id"), timeout=60, proc=proc))


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ScrapedRun]]:
    """The family runs, started together and scraped every second until their final state settled."""
    require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("family_dashboards")
    ports = {family: free_port() for family in RUNS}
    workdir = tmp / "stack"
    procs: dict[str, Proc] = {}
    try:
        services = {s.name: s for s in ms.start_local(
            workdir, prometheus_port=free_port(), alertmanager_port=free_port(),
            engine_targets=[f"127.0.0.1:{p}" for p in ports.values()], file_sd_dir=tmp / "file_sd",
            ready_timeout=30, scrape_interval=FAST["scrape_interval"],
            evaluation_interval=FAST["evaluation_interval"], group_wait=FAST["group_wait"],
            group_interval=FAST["group_interval"], resend_delay=FAST["resend_delay"])}
        prom = services["prometheus"].url
        # Wait for the targets' first (failed) scrapes so each run is scraped from its start.
        wait_for("every engine target scraped", lambda: len(query(prom, 'up{job="engine"}')) == len(RUNS),
                 timeout=20, interval=0.2)
        begin = time.time()
        (tmp / "poems.txt").write_text(POEMS)
        files = {"apoptosis": ["--shift_file", str(tmp / "poems.txt")]}
        for family, args in RUNS.items():
            procs[family] = start([*args, *files.get(family, []), *COMMON, "--output_dir", str(tmp / family),
                                   "--metrics_port", str(ports[family])], tmp / f"logs_{family}")
        run_ids: dict[str, str] = {}
        for family, proc in procs.items():
            run_ids[family] = run_id = _run_id(tmp / family, proc)
            selector = f'plasticity_run_status{{job="engine", run_id="{run_id}", status="finished"}} == 1'
            wait_for(f"the finished {family} run scraped", partial(query, prom, selector), timeout=120,
                     interval=0.2, proc=proc)
        # The endpoints hold the final states: wait until each run's series have two
        # samples inside the widest panel window, at a step the range queries hit
        # (after all finished, so the waits overlap).
        runs = {family: ScrapedRun(prom, run_id, begin, wait_until_settled(
                    prom, f'{{job="engine", run_id="{run_id}"}}', begin, WINDOW, proc=procs[family]))
                for family, run_id in run_ids.items()}
        yield runs
    finally:
        for proc in procs.values():
            stop(proc)
        ms.stop_local(workdir)


def _queries() -> list[tuple[str, str, str, str]]:
    """(family, dashboard uid, panel title, expr) of every panel query of the family dashboards."""
    return [(family, uid, title, expr) for uid, family in FAMILY_DASHBOARDS.items()
            for _u, title, expr in panel_queries(_dashboard(uid))]


QUERIES = _queries()
#: The widest range selector of any panel once Grafana's variables are substituted.
WINDOW = widest_range((substitute(e, {"run": "r", "job": "engine", "__rate_interval": RATE_INTERVAL})
                       for *_ids, e in QUERIES), default=duration_seconds(RATE_INTERVAL))


def query_range(prometheus: str, expr: str, start: float, end: float) -> dict[str, Any]:
    params = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                     "step": f"{STEP:g}"})
    return dict(get_json(prometheus, f"/api/v1/query_range?{params}"))


def finite_points(result: list[dict[str, Any]]) -> int:
    return sum(math.isfinite(float(v)) for s in result for _t, v in s["values"])


def test_family_dashboards_have_queries() -> None:
    assert set(FAMILY_DASHBOARDS.values()) == set(RUNS)
    for uid in FAMILY_DASHBOARDS:
        assert len([q for q in QUERIES if q[1] == uid]) >= 15, uid


def test_every_family_panel_query_returns_data(scraped: dict[str, ScrapedRun]) -> None:
    """All panel queries in one test: one shared set of runs, and one report of every empty panel."""
    empty = []
    for family, uid, title, expr in QUERIES:
        run = scraped[family]
        promql = substitute(expr, {"run": run.run_id, "job": "engine", "__rate_interval": RATE_INTERVAL})
        doc = query_range(run.prometheus, promql, run.start, run.end)
        assert doc["status"] == "success", (uid, title, doc)
        if "ALERTS" not in expr and finite_points(doc["data"]["result"]) == 0:
            empty.append(f"{uid} / {title}: {promql}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    # The check can fail: the same queries for another family's run are empty
    # (each dashboard charts its own family's metrics).
    families = list(RUNS)
    other = {f: families[(i + 1) % len(families)] for i, f in enumerate(families)}
    for family, uid, title, expr in QUERIES:
        if OWN[family] in expr:
            run = scraped[other[family]]
            promql = substitute(expr, {"run": run.run_id, "job": "engine", "__rate_interval": RATE_INTERVAL})
            assert finite_points(query_range(run.prometheus, promql, run.start, run.end)["data"]["result"]) == 0, \
                (uid, title)


def test_template_variables_list_the_run_and_its_layers(scraped: dict[str, ScrapedRun]) -> None:
    for uid, family in FAMILY_DASHBOARDS.items():
        run = scraped[family]
        values: dict[str, list[str]] = {}
        for name, text in variable_queries(_dashboard(uid)):
            inner = substitute(text, {"job": "engine", "sweep": ".*", "run": run.run_id})
            selector, label = (p.strip() for p in inner.removeprefix("label_values(").removesuffix(")").rsplit(",", 1))
            params = urllib.parse.urlencode({"match[]": selector, "start": f"{run.start:.3f}"})
            doc = get_json(run.prometheus, f"/api/v1/label/{label}/values?{params}")
            assert doc["status"] == "success", doc
            values[name] = doc["data"]
        assert values["job"] == ["engine"] and run.run_id in values["run"], (uid, values)
        assert values["layer"] and all(v.startswith(LAYERS[family]) for v in values["layer"]), (uid, values)

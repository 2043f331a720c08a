"""A real plasticity run scraped live: every catalog metric of the family is exported, sensibly."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from _e2e import Proc, Scrape, read_json, run_dir_in, start, stop, try_scrape, wait_for
from conftest import free_port

from engine.telemetry.catalog import CATALOG, exposition_names

TASKS, UNITS = 8, 16
FAMILY = {n for spec in CATALOG if spec.applies_to("plasticity") for n in exposition_names(spec)}
LAYERS = [f"layers.{i}" for i in range(3)]
#: Linger limit. Generous: the fixture scrapes until it sees the final state,
#: which ends the linger at once; the limit only bounds a scraper the machine's
#: load has kept from running for a while.
LINGER = 30


@dataclass
class Live:
    during: list[Scrape]
    final: Scrape
    run_dir: Path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Live:
    tmp = tmp_path_factory.mktemp("live")
    port = free_port()
    proc: Proc | None = None
    try:
        proc = start(["--experiment", "plasticity", "--metrics_port", str(port), "--metrics_linger", str(LINGER),
                      "--console", "off", "--no_tensorboard", "--threads", "1", "--output_dir", str(tmp / "out"),
                      "--per_class", "30", "--n_tasks", str(TASKS), "--hidden_units", str(UNITS),
                      "--diagnostics_every", "10", "--maturity_threshold", "10", "--replacement_rate", "0.01"],
                     tmp / "logs")
        run_dir = wait_for("the run dir", lambda: run_dir_in(tmp / "out"), timeout=60, proc=proc)
        wait_for("endpoint.json", lambda: read_json(run_dir / "endpoint.json"), 60, proc=proc)
        during: list[Scrape] = []
        final: Scrape | None = None
        while final is None and proc.poll() is None:  # the endpoint lingers until it served the end
            s = try_scrape(port)
            if s is not None and s.get("plasticity_run_status", status="finished") == [1.0]:
                final = s
            elif s is not None:
                during.append(s)
            time.sleep(0.05)
        assert final is not None, f"no scrape saw the finished run: {proc.err()[-3000:]}"
        assert proc.wait(timeout=20) == 0, proc.err()[-3000:]
        return Live(during, final, run_dir)
    finally:
        stop(proc)


def test_every_family_metric_is_exported(live: Live) -> None:
    seen = {name for s in live.during + [live.final] for (name, _labels) in s.samples}
    missing = FAMILY - seen
    assert not missing, sorted(missing)
    assert len(live.during) >= 2


def test_family_values_are_sensible(live: Live) -> None:
    f = live.final
    assert f.one("plasticity_run_status", status="finished") == 1.0
    assert f.one("plasticity_stream_task") == TASKS - 1
    assert 0.0 <= f.one("plasticity_online_accuracy_ratio") <= 1.0
    assert 0.0 <= f.one("plasticity_val_accuracy_ratio") <= 1.0
    assert f.one("plasticity_online_loss") > 0 and math.isfinite(f.one("plasticity_online_loss"))
    for layer in LAYERS:
        assert 0 < f.one("plasticity_layer_effective_rank", layer=layer) <= UNITS
        assert 1 <= f.one("plasticity_layer_stable_rank", layer=layer) <= UNITS
        assert 1 <= f.one("plasticity_layer_approximate_rank", layer=layer) <= UNITS
        for ratio in ("dead", "dormant"):
            assert 0 <= f.one(f"plasticity_layer_{ratio}_ratio", layer=layer) <= 1
        assert f.one("plasticity_layer_weight_abs_mean", layer=layer) > 0
        assert f.one("plasticity_layer_grad_norm", layer=layer) > 0
        assert f.one("plasticity_layer_units", layer=layer) == UNITS
    assert sum(f.get("plasticity_units_replaced_total")) > 0
    assert f.one("plasticity_diagnostics_seconds_total") > 0
    # counters never go backwards over the scrapes; the task gauge only moves forward
    for name in ("plasticity_units_replaced_total", "plasticity_diagnostics_seconds_total"):
        values = [sum(s.get(name)) for s in live.during + [f] if s.get(name)]
        assert values == sorted(values), name
    tasks = [s.one("plasticity_stream_task") for s in live.during if s.get("plasticity_stream_task")]
    assert tasks == sorted(tasks)
    samples = (live.run_dir / "samples.jsonl").read_text()
    assert "layer_effective_rank" in samples


def test_series_count_stays_within_the_family_budget(live: Live) -> None:
    from engine.telemetry.catalog import series_budget

    # results + prometheus sinks (console off, no TensorBoard); 3 layers; one phase.
    budget = series_budget(0, len(LAYERS), 3, 2, "plasticity", n_phases=1)
    for s in live.during + [live.final]:
        ours = [k for k in s.samples if k[0] in FAMILY]
        assert len(ours) <= budget, (len(ours), budget)
    assert len([k for k in live.final.samples if k[0] in FAMILY]) > budget // 2  # the bound is not vacuous

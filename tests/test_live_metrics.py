"""A real default run scraped live over HTTP: every catalog metric, sensible values, linger.

One run (module fixture) is scraped repeatedly while it trains; scraping stops
a few epochs before the end so the endpoint must linger (it was scraped) until
one more scrape sees the final state, after which the process exits at once.

Nothing here assumes a quiet machine: the fixture keeps scraping until it has
the scrapes the tests need, a run that outpaces the scraper (its end seen by a
scrape before scraping stopped) is repeated, and that the post-end scrape ended
the linger is read from the run's log rather than from how fast the process
exited.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from _e2e import Proc, Scrape, read_json, read_jsonl, run_dir_in, start, stop, try_scrape, wait_for
from conftest import free_port

from engine.telemetry.events import SEED_STATES
from engine.telemetry.catalog import CATALOG, NEURON_QUANTILES, exposition_names, series_budget

EPOCHS = 80  # the default schedule: 30 warm-up + 50 adaptation
#: Linger limit. Generous: a scrape of the final state ends the linger at once, so
#: the limit costs nothing unless that scrape is missing, and a loaded machine
#: may take seconds from the run's end to the test's final scrape.
LINGER = 30.0
STOP_BEFORE = 8  # epochs before the end at which scraping pauses (once MIN_DURING scrapes were taken)
MIN_DURING = 10  # scrapes while training that the tests below need
ATTEMPTS = 3  # runs tried before giving up on one that the scraper did not outpace
SINKS = {"results", "prometheus"}  # console off, no TensorBoard, no MLflow
#: Series of the seeds family (the default run); other families' metrics must not appear.
ALLOWED = {n for spec in CATALOG if spec.applies_to("seeds") for n in exposition_names(spec)}


@dataclass
class Live:
    during: list[Scrape]  # scrapes taken while the run was training
    final: Scrape  # the scrape after the run ended
    final_to_exit: float  # seconds from the final scrape to process exit
    log: str  # the run's run.log
    alive_after_end: bool  # still serving ~1 s after metrics.json said finished
    returncode: int
    run_dir: Path
    port: int


def _epochs(scrapes: list[Scrape]) -> float:
    """Epochs completed according to the last scrape (0 before the first epoch)."""
    values = scrapes[-1].get("plasticity_epochs_total") if scrapes else []
    return values[0] if values else 0.0


def _scrape_while_training(proc: Proc, port: int) -> list[Scrape] | None:
    """Scrapes of the run while it trains, until one shows it STOP_BEFORE epochs
    from the end and at least MIN_DURING were taken; None if a scrape saw the run
    already ended (it outpaced the scraper: no linger is left to test)."""
    during: list[Scrape] = []
    deadline = time.monotonic() + 120
    while _epochs(during) < EPOCHS - STOP_BEFORE or len(during) < MIN_DURING:
        assert proc.poll() is None, proc.err()[-3000:]
        assert time.monotonic() < deadline, "run too slow"
        s = try_scrape(port)
        if s is not None and s.get("plasticity_run_info"):  # the run has started
            if s.one("plasticity_run_status", status="running") != 1.0:
                return None
            during.append(s)
        time.sleep(0.1)
    return during


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Live:
    for attempt in range(1, ATTEMPTS + 1):
        tmp = tmp_path_factory.mktemp(f"live{attempt}")
        port = free_port()
        out = tmp / "out"
        proc: Proc | None = None
        try:
            proc = start(["--metrics_port", str(port), "--metrics_linger", str(LINGER), "--console", "off",
                          "--no_tensorboard", "--output_dir", str(out)], tmp / "logs")
            run_dir = wait_for("the run dir", lambda: run_dir_in(out), timeout=60, proc=proc)
            endpoint = wait_for("endpoint.json", lambda: read_json(run_dir / "endpoint.json"), 60, proc=proc)
            assert endpoint == {"host": "127.0.0.1", "port": port}
            # Scrape until near the end but still running, then stop: no scrape
            # has seen the final state when the run ends.
            during = _scrape_while_training(proc, port)
            if during is None:
                continue  # this run ended between two scrapes near its end: try another
            status = lambda: (read_json(run_dir / "metrics.json") or {}).get("status") != "running"  # noqa: E731
            wait_for("metrics.json to leave 'running'", status, timeout=60, interval=0.02, proc=proc)
            time.sleep(1.0)  # the run has ended; nobody scraped since: the endpoint must linger
            alive = proc.poll() is None
            final = try_scrape(port)
            assert final is not None, f"endpoint gone after the run ended: {proc.err()[-3000:]}"
            rc = proc.wait(timeout=LINGER + 30)
            return Live(during, final, time.time() - final.t, (run_dir / "run.log").read_text(), alive, rc,
                        run_dir, port)
        finally:
            stop(proc)
    pytest.fail(f"in {ATTEMPTS} runs a scrape always saw the run end before scraping stopped "
                f"{STOP_BEFORE} epochs before it")


def test_run_finished_and_endpoint_lingered(live: Live) -> None:
    assert live.returncode == 0
    assert live.alive_after_end, "the endpoint did not linger after a scraped run ended"
    assert live.final.one("plasticity_run_status", status="finished") == 1.0
    for other in ("running", "diverged", "interrupted", "failed"):
        assert live.final.one("plasticity_run_status", status=other) == 0.0
    assert live.final.one("plasticity_training_phase", phase="done") == 1.0
    # It lingered for a scrape, and the post-end scrape ended that wait, not the
    # limit (the engine logs a warning when the limit ends it)...
    assert "serving its final state until Prometheus scrapes it" in live.log, live.log[-2000:]
    assert "no scrape saw the final state" not in live.log, live.log[-2000:]
    # ...so the process exited long before the limit would have ended the wait
    # (about LINGER - 1 s after this scrape): half of it leaves room for a slow exit.
    assert live.final_to_exit < LINGER / 2, live.final_to_exit
    assert not (live.run_dir / "endpoint.json").exists()
    assert read_json(live.run_dir / "metrics.json")["status"] == "finished"


def test_scraped_several_times_while_running(live: Live) -> None:
    assert len(live.during) >= 10, len(live.during)
    for s in live.during:
        assert s.one("plasticity_run_status", status="running") == 1.0
        assert sum(s.get("plasticity_run_status")) == 1.0
        epochs = s.one("plasticity_epochs_total")
        if epochs > 0:  # the phase of the last completed epoch (30 warm-up epochs)
            phase = "warm_up" if epochs <= 30 else "adaptation"
            assert s.one("plasticity_training_phase", phase=phase) == 1.0, (epochs, phase)
            assert sum(s.get("plasticity_training_phase")) == 1.0


def test_every_catalog_metric_is_exported(live: Live) -> None:
    seen = {name for s in live.during + [live.final] for (name, _labels) in s.samples}
    missing = ALLOWED - seen
    assert not missing, sorted(missing)
    for s in live.during + [live.final]:
        for spec in CATALOG:
            fam = spec.name.removesuffix("_total") if spec.kind == "counter" else spec.name
            if fam in s.families:
                assert s.families[fam] == (spec.kind, spec.help), spec.name


def test_nothing_outside_the_catalog_is_exported(live: Live) -> None:
    for s in live.during + [live.final]:
        extra = {n for (n, _labels) in s.samples
                 if n not in ALLOWED and not n.startswith(("python_", "process_"))}
        assert not extra, sorted(extra)


def test_series_count_stays_within_budget(live: Live) -> None:
    budget = series_budget(n_seeds=4, n_layers=2, topk=3, n_sinks=len(SINKS))
    for s in live.during + [live.final]:
        ours = [k for k in s.samples if k[0] in ALLOWED]
        assert len(ours) <= budget, (len(ours), budget)
    sinks = {lab["sink"] for lab, _v in live.final.labelled("plasticity_sink_errors_total")}
    assert sinks == SINKS
    assert sum(live.final.get("plasticity_sink_errors_total")) == 0.0


def test_steps_and_heartbeat_advance(live: Live) -> None:
    steps = [s.one("plasticity_steps_total") for s in live.during]
    assert steps == sorted(steps), "steps_total went backwards"
    assert steps[-1] > steps[0]
    assert sum(b > a for a, b in zip(steps, steps[1:])) >= len(steps) // 2
    for s in live.during:
        beat = s.one("plasticity_last_step_timestamp_seconds")
        assert abs(s.t - beat) < 5, (s.t, beat)
    history = read_jsonl(live.run_dir / "history.jsonl")
    assert live.final.one("plasticity_steps_total") == history[-1]["step"] == 2000.0
    assert live.final.one("plasticity_epochs_total") == EPOCHS
    assert live.final.one("plasticity_training_progress_ratio") == 1.0


def test_scalar_values_are_sensible(live: Live) -> None:
    for s in live.during + [live.final]:
        if s.one("plasticity_epochs_total") == 0:
            assert not s.get("plasticity_val_accuracy_ratio")
            continue  # scraped before the first epoch ended
        acc = s.one("plasticity_val_accuracy_ratio")
        best = s.one("plasticity_best_val_accuracy_ratio")
        assert 0.0 <= acc <= best <= 1.0
        for name in ("plasticity_train_loss", "plasticity_val_loss"):
            assert math.isfinite(s.one(name)) and s.one(name) > 0
        assert s.one("plasticity_learning_rate") == pytest.approx(3e-3)
        assert s.one("plasticity_grad_norm") >= 0
        assert s.one("plasticity_samples_per_second") > 0
        assert s.one("plasticity_model_parameters") > 0
        assert s.one("plasticity_plateau_patience_epochs") == 5
        assert 0 <= s.one("plasticity_plateau_epochs") <= 5
        assert 0.0 < s.one("plasticity_training_progress_ratio") <= 1.0
        used = s.one("plasticity_device_memory_used_bytes", device="cpu")
        limit = s.one("plasticity_device_memory_limit_bytes", device="cpu")
        assert 0 < used < limit
        assert s.one("plasticity_nonfinite_loss_steps_total") == 0.0
        # Observed in the same event as epochs_total, and a scrape never sees half an event.
        assert s.one("plasticity_epoch_duration_seconds_count") == s.one("plasticity_epochs_total")
    f = live.final
    assert f.one("plasticity_epoch_duration_seconds_count") == f.one("plasticity_epochs_total") == EPOCHS
    assert f.one("plasticity_epoch_duration_seconds_bucket", le="+Inf") == EPOCHS
    assert f.one("plasticity_epoch_duration_seconds_sum") > 0
    final = read_json(live.run_dir / "metrics.json")["metrics"]
    assert f.one("plasticity_val_accuracy_ratio") == pytest.approx(final["val_accuracy"])
    assert f.one("plasticity_best_val_accuracy_ratio") == pytest.approx(final["best_val_accuracy"])
    assert f.one("plasticity_model_parameters") == final["parameters"]


def test_build_and_run_info(live: Live) -> None:
    info = live.final.labelled("plasticity_run_info")
    assert len(info) == 1 and info[0][1] == 1.0
    assert info[0][0]["experiment"] == "seeds" and info[0][0]["device"] == "cpu"
    doc = read_json(live.run_dir / "metrics.json")
    assert info[0][0]["run_id"] == doc["run_id"] and info[0][0]["config_hash"] == doc["config_hash"]
    # Unique per launch (<config hash>-<6 hex>) and named in the run directory.
    assert doc["run_id"].startswith(doc["config_hash"] + "-") and live.run_dir.name.endswith(doc["run_id"])
    build = live.final.labelled("plasticity_build_info")
    assert len(build) == 1 and build[0][1] == 1.0
    assert set(build[0][0]) == {"version", "python_version", "torch_version"}


def test_a_seed_germinates_and_blends_in(live: Live) -> None:
    f = live.final
    assert f.one("plasticity_germinations_total") >= 1
    assert f.one("plasticity_seed_transitions_total", to_state="training") == f.one("plasticity_germinations_total")
    assert f.one("plasticity_seed_transitions_total", to_state="active") >= 1
    seeds = {(lab["seed"], lab["layer"]) for lab, _ in f.labelled("plasticity_seed_alpha_ratio")}
    assert len(seeds) == 4
    blended = []
    for seed, layer in seeds:
        alphas = [s.one("plasticity_seed_alpha_ratio", seed=seed, layer=layer)
                  for s in live.during + [f] if s.get("plasticity_seed_alpha_ratio")]
        assert all(0.0 <= a <= 1.0 for a in alphas)
        if f.one("plasticity_seed_state", seed=seed, state="failed") == 1.0 and alphas[-1] == 0.0:
            # Rolled back by the guard: alpha falls straight to 0 once, and stays there.
            drop = max(i for i, a in enumerate(alphas) if a > 0) + 1 if any(alphas) else 0
            assert alphas[:drop] == sorted(alphas[:drop]), (seed, alphas)
            continue
        assert alphas == sorted(alphas), (seed, alphas)  # alpha never decreases otherwise
        if alphas and alphas[0] == 0.0 and alphas[-1] == 1.0:
            blended.append(seed)
            assert (f.one("plasticity_seed_state", seed=seed, state="active")
                    + f.one("plasticity_seed_state", seed=seed, state="fossilized")) == 1.0
    assert blended, "no seed's alpha went from 0 to 1 over the scrapes"
    for s in live.during + [f]:
        for seed, layer in seeds:
            states = s.get("plasticity_seed_state", seed=seed, layer=layer)
            if s.one("plasticity_epochs_total") > 0:
                assert sorted(states) == [0.0] * (len(SEED_STATES) - 1) + [1.0], states  # exactly one state


def test_layer_and_neuron_signals(live: Live) -> None:
    for s in live.during + [live.final]:
        if s.one("plasticity_epochs_total") == 0:
            continue  # scraped before the first epoch ended
        for layer in ("layers.0", "layers.1"):
            assert s.one("plasticity_layer_units", layer=layer) == 16
            assert 0 <= s.one("plasticity_layer_dead_units", layer=layer) <= 16
            qs = [s.one("plasticity_neuron_activation_quantile", layer=layer, quantile=q)
                  for q in NEURON_QUANTILES]
            assert qs == sorted(qs) and qs[0] >= 0, qs
            top = [s.one("plasticity_neuron_activation_topk", layer=layer, rank=str(r)) for r in (1, 2, 3)]
            assert top == sorted(top, reverse=True), top
            assert top[0] == pytest.approx(qs[-1])  # the largest unit is the max quantile
            assert qs[0] <= top[-1]

"""Every variant (base + one new class) through the real CLI: artifacts, and a live scrape.

The four variants run at once; the default one (NDL+IR) serves metrics and is
scraped while it trains and once after it ended (the endpoint lingers), and
every catalog metric of the family must be exported with sensible values.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from _e2e import Proc, Scrape, read_json, read_jsonl, run, run_dir_in, start, stop, try_scrape, wait_for
from conftest import free_port

from engine.telemetry.catalog import CATALOG, exposition_names

#: Tiny: 8x8 digits, 64-16-8-16-64, 5 base epochs, one new class.
TINY = ["--experiment", "neurogenesis", "--hidden_sizes", "16,8", "--base_epochs", "5", "--class_order", "0",
        "--plasticity_epochs", "2", "--stability_epochs", "2", "--finetune_epochs", "2", "--units_per_step", "2",
        "--growth_cap", "4", "--eval_every", "5", "--seed", "3", "--no_tensorboard", "--console", "plain",
        "--threads", "1"]
VARIANTS = {"CL": ["--no_neurogenesis", "--no_replay"], "NDL": ["--neurogenesis", "--no_replay"],
            "CL+IR": ["--no_neurogenesis", "--replay"], "NDL+IR": []}  # the default is NDL+IR


LIVE = "NDL+IR"
#: Linger limit of the live run. Generous: the fixture scrapes until it sees the
#: final state, which ends the linger at once; the limit only bounds a scraper
#: the machine's load has kept from running for a while.
LINGER = 30


@dataclass
class Runs:
    dirs: dict[str, Path]  # variant -> finished run directory
    during: list[Scrape]  # scrapes of the live (NDL+IR) run while it trained
    final: Scrape  # its scrape after it ended


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """All four variants, started together; the default one is scraped live."""
    tmp = tmp_path_factory.mktemp("ndl_cli")
    procs: dict[str, Proc] = {}
    port = free_port()
    try:
        for name, flags in VARIANTS.items():
            metrics = (["--metrics_port", str(port), "--metrics_linger", str(LINGER)] if name == LIVE
                       else ["--metrics_port", "0"])
            procs[name] = start(TINY + flags + metrics + ["--output_dir", str(tmp / name)], tmp / f"logs_{name}")
        live = procs[LIVE]
        wait_for("the live run dir", lambda: run_dir_in(tmp / LIVE), timeout=120, proc=live)
        during: list[Scrape] = []
        final: Scrape | None = None
        deadline = time.monotonic() + 120
        # Scrape until a scrape shows the run ended (the endpoint lingers until one
        # has): that scrape is the final one. Stopping on metrics.json instead
        # races with it: a scrape just after the end ends the linger, and the
        # endpoint may be gone before a further "final" scrape.
        while final is None:
            assert live.poll() is None and time.monotonic() < deadline, live.err()[-3000:]
            s = try_scrape(port)
            if s is not None and s.get("plasticity_run_info"):
                if s.one("plasticity_run_status", status="running"):
                    during.append(s)
                else:
                    final = s
            time.sleep(0.05)
        out = {}
        for name, proc in procs.items():
            assert proc.wait(timeout=120) == 0, proc.err()[-3000:]
            d = run_dir_in(tmp / name)
            assert d is not None
            out[name] = d
        return Runs(out, during, final)
    finally:
        for proc in procs.values():
            stop(proc)


def _matrix(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "artifacts" / "forgetting_matrix.csv") as f:
        return list(csv.DictReader(f))


def _growth(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "artifacts" / "growth.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_finishes_with_artifacts(runs: Runs, variant: str) -> None:
    run_dir = runs.dirs[variant]
    doc = read_json(run_dir / "metrics.json")
    assert doc["status"] == "finished"
    m = doc["metrics"]
    assert m["epochs"] == 6 and m["stage"] == 1
    assert 0 < m["val_loss"] < 0.2 and 0 < m["newest_class_error"] < 0.3
    rows = _matrix(run_dir)
    assert [(r["stage"], r["learned_class"]) for r in rows] == [("0", "-1"), ("1", "0")]
    assert rows[0]["class_0"] == "" and float(rows[1]["class_0"]) == pytest.approx(m["newest_class_error"], abs=1e-6)
    th = json.loads((run_dir / "artifacts" / "thresholds.json").read_text())
    assert len(th["thresholds"]) == 2 and all(t > 0 for t in th["thresholds"]) and th["percentile"] == 95.0
    assert th["variant"] == variant
    for png in ("reconstructions.png", "replay_samples.png", "error_curves.png"):
        assert (run_dir / "artifacts" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    manifest = read_json(run_dir / "manifest.json")
    assert manifest["dataset"] == "digits8" and len(manifest["sha256"]) == 64
    assert manifest["base_classes"] == [1, 7] and manifest["class_order"] == [0]
    added = sum(int(r["added"]) for r in _growth(run_dir) if r["stage"] == "1")
    units = [int(m[f"units_encoder_{i}"]) for i in range(2)]
    if variant.startswith("NDL"):
        assert 0 < added <= 2 * 4  # at most the cap per level
        assert sum(units) == 24 + added
    else:
        assert added == 0 and units == [16, 8]
    assert (m["replay_samples"] > 0) == variant.endswith("+IR")
    history = read_jsonl(run_dir / "history.jsonl")
    assert [r["phase"] for r in history] == ["base"] * 5 + ["incremental"]


def test_all_variants_share_the_same_base(runs: Runs) -> None:
    bases = {name: _matrix(d)[0] for name, d in runs.dirs.items()}
    assert len({json.dumps(b, sort_keys=True) for b in bases.values()}) == 1, bases
    th = {json.loads((d / "artifacts" / "thresholds.json").read_text())["thresholds"][0] for d in runs.dirs.values()}
    assert len(th) == 1


def test_bad_classes_fail_fast_without_a_run(tmp_path: Path) -> None:
    r = run(TINY + ["--class_order", "1,2", "--output_dir", str(tmp_path)], timeout=60)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "class_order" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


# -- live scrape of the default variant -------------------------------------------

def test_live_scrape_exports_every_family_metric(runs: Runs) -> None:
    seen = {name for s in runs.during + [runs.final] for (name, _labels) in s.samples}
    ours = {n for spec in CATALOG if spec.applies_to("neurogenesis") for n in exposition_names(spec)}
    others = {n for spec in CATALOG if not spec.applies_to("neurogenesis") for n in exposition_names(spec)}
    assert not ours - seen, sorted(ours - seen)
    assert not others & seen, sorted(others & seen)
    assert runs.final.one("plasticity_run_status", status="finished") == 1.0
    assert runs.final.one("plasticity_run_info", experiment="neurogenesis", device="cpu") == 1.0


def test_live_scrape_has_no_accuracy_for_an_autoencoder(runs: Runs) -> None:
    assert not runs.final.get("plasticity_best_val_accuracy_ratio")


def test_live_scrape_values_are_sensible(runs: Runs) -> None:
    f = runs.final
    m = read_json(runs.dirs[LIVE] / "metrics.json")["metrics"]
    assert f.one("plasticity_ndl_stage") == 1 and f.one("plasticity_ndl_current_class") == 0
    classes = {lab["class"]: v for lab, v in f.labelled("plasticity_ndl_class_reconstruction_error")}
    assert set(classes) == {"0", "1", "7"} and all(0 < v < 0.3 for v in classes.values())
    base = {lab["class"]: v for lab, v in f.labelled("plasticity_ndl_class_baseline_error")}
    assert set(base) == {"0", "1", "7"} and base["0"] == pytest.approx(classes["0"])
    assert f.one("plasticity_val_loss") == pytest.approx(sum(classes.values()) / 3, rel=1e-5)
    assert f.one("plasticity_ndl_outlier_fraction_limit_ratio") == 0.2
    assert f.one("plasticity_ndl_replay_samples_total") == m["replay_samples"] > 0
    added = 0.0
    for i, width in enumerate((16, 8)):
        layer = f"encoder.{i}"
        units = f.one("plasticity_layer_units", layer=layer)
        total = f.one("plasticity_ndl_neurons_added_total", layer=layer)
        assert units == width + total == m[f"units_encoder_{i}"]
        assert f.one("plasticity_ndl_stage_neurons_added", layer=layer) == total  # one stage only
        assert 0 <= total <= f.one("plasticity_ndl_stage_growth_limit", layer=layer) == 4
        assert f.one("plasticity_ndl_layer_threshold", layer=layer) > 0
        assert 0 <= f.one("plasticity_ndl_outlier_fraction_ratio", layer=layer) <= 1
        assert math.isfinite(f.one("plasticity_ndl_layer_reconstruction_error", layer=layer))
        assert 0 <= f.one("plasticity_layer_dead_units", layer=layer) <= units
        added += total
    assert added > 0  # the default variant grows on a new class
    for s in runs.during:  # counters never go backwards
        for name in ("plasticity_ndl_replay_samples_total", "plasticity_steps_total"):
            assert all(v <= f.one(name) for v in s.get(name))


def test_class_errors_are_also_measured_during_training(runs: Runs) -> None:
    rows = [r for r in read_jsonl(runs.dirs[LIVE] / "samples.jsonl") if r["metric"] == "ndl_class_reconstruction_error"]
    history = read_jsonl(runs.dirs[LIVE] / "history.jsonl")
    epoch_end_steps = {h["step"] for h in history}
    periodic = {r["step"] for r in rows} - epoch_end_steps
    assert len(periodic) >= 3, sorted({r["step"] for r in rows})
    assert all(0 < r["value"] < 1 for r in rows)


def test_series_count_stays_within_the_family_budget(runs: Runs) -> None:
    from engine.telemetry.catalog import series_budget

    ours_names = {n for spec in CATALOG if spec.applies_to("neurogenesis") for n in exposition_names(spec)}
    # 2 levels (hidden_sizes 16,8), classes 1, 7 and 0; results, console, prometheus; base + incremental.
    budget = series_budget(0, 2, 3, 3, "neurogenesis", n_classes=3, n_phases=2)
    for s in runs.during + [runs.final]:
        ours = [k for k in s.samples if k[0] in ours_names]
        assert len(ours) <= budget, (len(ours), budget)
    assert len([k for k in runs.final.samples if k[0] in ours_names]) > budget // 2

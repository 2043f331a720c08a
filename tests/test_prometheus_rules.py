"""Prometheus config and rules, checked and unit-tested with the real promtool.

Also: the shipped scrape/evaluation settings, file_sd labels reaching the
series in a real Prometheus, and that the rule unit tests catch the classic
mistakes (a mutated rule must make them fail).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from binaries import (
    PROMETHEUS_YML,
    RULE_TESTS_DIR,
    RULES_DIR,
    duration_seconds,
    require_binary,
    start,
    stop,
)
from conftest import free_port

from engine.sweep.file_sd import TargetsFile
from monitoring.stack_config import render_configs

RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
TEST_FILES = sorted(RULE_TESTS_DIR.glob("*.yml"))
ENGINE_JOBS = ("engine", "engine_trials")


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("promtool"), *args], check=False, capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def _rules() -> list[dict[str, Any]]:
    return [r for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]


def _config() -> dict[str, Any]:
    return yaml.safe_load(PROMETHEUS_YML.read_text())


def test_repo_has_rules_and_rule_tests() -> None:
    assert RULE_FILES and TEST_FILES


def test_config_syntax() -> None:
    res = _promtool("check", "config", "--syntax-only", str(PROMETHEUS_YML))
    assert res.returncode == 0, res.stdout + res.stderr


def test_config_with_repo_paths(tmp_path: Path) -> None:
    """The shipped config, with its container paths pointed at the repo, loads
    every rule file (a glob matching nothing would pass silently)."""
    sd = tmp_path / "file_sd"
    TargetsFile(sd / "demo.json").add("abc", "127.0.0.1:9999", {"sweep": "demo", "run": "abc", "trial": "000"})
    path = render_configs(tmp_path, prometheus_port=9090, alertmanager_port=9093, engine_targets=[],
                          file_sd_dir=sd, slack_url_file=tmp_path / "slack_webhook_url").prometheus
    res = _promtool("check", "config", str(path))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in out, out
    for f in RULE_FILES:
        assert str(f) in out, out


def test_check_rules() -> None:
    res = _promtool("check", "rules", *map(str, RULE_FILES))
    assert res.returncode == 0, res.stdout + res.stderr
    found = sum(int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", res.stdout))
    assert found == len(_rules())


def test_rule_unit_tests() -> None:
    res = _promtool("test", "rules", *map(str, TEST_FILES))
    assert res.returncode == 0, res.stdout + res.stderr


def test_production_intervals_and_targets() -> None:
    """Scrape targets and intervals as documented (README latency figure)."""
    cfg = _config()
    assert duration_seconds(cfg["global"]["evaluation_interval"]) == 15
    assert cfg["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["engine"]["static_configs"][0]["targets"] == ["engine:8000"]
    assert jobs["engine_trials"]["file_sd_configs"][0]["files"] == ["/etc/prometheus/file_sd/*.json"]
    for name in ENGINE_JOBS:
        job = jobs[name]
        assert duration_seconds(job["scrape_interval"]) == 5
        assert duration_seconds(job["scrape_timeout"]) < 5
        # The engine exports run_id; the target labels sweep/run/trial must not
        # be relabelled away or overridden by exported labels.
        assert not job.get("honor_labels")
        assert "relabel_configs" not in job and "metric_relabel_configs" not in job


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    """Each alert: a case with expected alerts (labels incl. severity and run_id,
    every annotation of the rule) and a case expecting none."""
    cases: dict[str, list[dict[str, Any]]] = {}
    for f in TEST_FILES:
        for test in yaml.safe_load(f.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], []).append(case)
    for rule in (r for r in _rules() if "alert" in r):
        name = rule["alert"]
        firing = [c for c in cases.get(name, []) if c.get("exp_alerts")]
        quiet = [c for c in cases.get(name, []) if not c.get("exp_alerts")]
        assert firing, f"{name}: no unit test case where it fires"
        assert quiet, f"{name}: no unit test case where it must stay quiet"
        for case in firing:
            for exp in case["exp_alerts"]:
                assert exp["exp_labels"]["severity"] == rule["labels"]["severity"], name
                assert exp["exp_labels"].get("run_id"), name
                assert set(exp["exp_annotations"]) == set(rule["annotations"]), name


def test_every_recording_rule_has_an_expr_test() -> None:
    tested: set[str] = set()
    for f in TEST_FILES:
        for test in yaml.safe_load(f.read_text())["tests"]:
            tested |= {c["expr"] for c in test.get("promql_expr_test", []) if c.get("exp_samples")}
    for rule in (r for r in _rules() if "record" in r):
        assert rule["record"] in tested, f"recording rule {rule['record']} has no promql_expr_test"


#: The baseline alerts' exemption after entering a domain shift (apoptosis family).
_SHIFT_GUARD = ('          unless on (job, instance, run_id) '
                '(changes(plasticity_training_phase{phase="shift"}[35m]) > 0)\n')

# Naive versions of rules, which the unit tests must reject:
# name -> (alert whose test cases run, rule file, text, replacement).
MUTATIONS = {
    # increase() misses a counter that is already 1 at the first scrape.
    "LossNonFinite via increase()": (
        "LossNonFinite", "alerts.yml",
        ("max_over_time(plasticity_nonfinite_loss_steps_total[10m])\n"
         "                - max_over_time(plasticity_rollbacks_total[10m])"),
        ("increase(plasticity_nonfinite_loss_steps_total[10m])\n"
         "                - increase(plasticity_rollbacks_total[10m])"),
    ),
    # A non-finite step answered by a rollback is recovered: counting every
    # non-finite step pages for runs that trained on and finished.
    "LossNonFinite without the rollbacks": (
        "LossNonFinite", "alerts.yml",
        "\n                - max_over_time(plasticity_rollbacks_total[10m])", "",
    ),
    # Instant values vanish with the run's endpoint: a divergence seen by one
    # scrape only (the engine then exits) would resolve before it is routed.
    "LossNonFinite on the last values": (
        "LossNonFinite", "alerts.yml",
        ('max_over_time(plasticity_run_status{status="diverged"}[10m]) == 1\n'
         "            or\n"
         "              (\n"
         "                  max_over_time(plasticity_nonfinite_loss_steps_total[10m])\n"
         "                - max_over_time(plasticity_rollbacks_total[10m])"),
        ('plasticity_run_status{status="diverged"} == 1\n'
         "            or\n"
         "              (\n"
         "                  plasticity_nonfinite_loss_steps_total\n"
         "                - plasticity_rollbacks_total"),
    ),
    # Without the status, an engine that exports no counters never pages.
    "LossNonFinite on the counters only": (
        "LossNonFinite", "alerts.yml",
        ('              max_over_time(plasticity_run_status{status="diverged"}[10m]) == 1\n'
         "            or\n"), "",
    ),
    # An explosion seen by one scrape only (the run then finishes): on the
    # instant value the page would go with the endpoint.
    "LossExploding on the last value": (
        "LossExploding", "alerts.yml",
        "max_over_time(plasticity_loss_explosions_total[10m]) > 0",
        "plasticity_loss_explosions_total > 0",
    ),
    # increase() cannot see an explosion counted before the first scrape.
    "LossExploding via increase()": (
        "LossExploding", "alerts.yml",
        "max_over_time(plasticity_loss_explosions_total[10m]) > 0",
        "increase(plasticity_loss_explosions_total[10m]) > 0",
    ),
    # A failed run exits after one scrape saw it: on the instant value the
    # page would resolve at once.
    "RunFailed on the last value": (
        "RunFailed", "alerts.yml",
        'max_over_time(plasticity_run_status{status="failed"}[10m]) == 1',
        'plasticity_run_status{status="failed"} == 1',
    ),
    # Interrupted (Ctrl-C, SIGTERM) is no crash, and a divergence is LossNonFinite's.
    "RunFailed on every bad end": (
        "RunFailed", "alerts.yml",
        'max_over_time(plasticity_run_status{status="failed"}[10m]) == 1',
        'max_over_time(plasticity_run_status{status=~"failed|diverged|interrupted"}[10m]) == 1',
    ),
    # Without the sink label the alert cannot say which sink failed, and two
    # failed sinks of a run would be one alert.
    "TelemetrySinkFailed without the sink label": (
        "TelemetrySinkFailed", "alerts.yml",
        "max by (job, instance, run_id, sweep, run, trial, sink) (",
        "max by (job, instance, run_id, sweep, run, trial) (",
    ),
    # A sink that fails at the run's start is already at 1 when first scraped.
    "TelemetrySinkFailed via increase()": (
        "TelemetrySinkFailed", "alerts.yml",
        "max_over_time(plasticity_sink_errors_total[10m]) > 0",
        "increase(plasticity_sink_errors_total[10m]) > 0",
    ),
    # A baseline window that contains the spike dilutes the z-score (which
    # reads the recorded mean and standard deviation).
    "LossDiverging baseline without offset": (
        "LossDiverging", "recording.yml",
        ("expr: avg_over_time(plasticity_train_loss[30m] offset 5m)\n"
         "      - record: run_id:plasticity_train_loss:stddev30m_offset5m\n"
         "        expr: stddev_over_time(plasticity_train_loss[30m] offset 5m)"),
        ("expr: avg_over_time(plasticity_train_loss[30m])\n"
         "      - record: run_id:plasticity_train_loss:stddev30m_offset5m\n"
         "        expr: stddev_over_time(plasticity_train_loss[30m])"),
    ),
    # Without the status guard a finished run "stalls" forever.
    "TrainingStalled without running guard": (
        "TrainingStalled", "alerts.yml",
        ("(time() - plasticity_last_step_timestamp_seconds) > 300\n"
         '          and on (job, instance, run_id) plasticity_run_status{status="running"} == 1'),
        "(time() - plasticity_last_step_timestamp_seconds) > 300",
    ),
    # A plain `up == 0` keeps alerting on every run that ended normally.
    "TargetDown as up == 0": (
        "TargetDown", "alerts.yml",
        ("max by (job, instance, run_id, sweep, run, trial, node) (\n"
         '            last_over_time(plasticity_run_status{job=~"engine|engine_trials", status="running"}[1h]) == 1\n'
         "          )\n"
         '          unless on (job, instance) (up{job=~"engine|engine_trials"} == 1)'),
        'up{job=~"engine|engine_trials"} == 0',
    ),
    # Existing alerts the families would break: neurogenesis class stages are
    # not comparable with base training (loss ~20x, gradient ~40x) ...
    "LossDiverging during neurogenesis stages": (
        "LossDiverging", "alerts.yml",
        ('          and on (job, instance, run_id) plasticity_run_status{status="running"} == 1\n'
         '          unless on (job, instance, run_id) plasticity_training_phase{phase="incremental"} == 1\n'
         f'{_SHIFT_GUARD}'
         '        for: 2m\n'
         '        labels:\n'
         '          severity: critical\n'
         '        annotations:\n'
         '          summary: "Run {{ $labels.run_id }}: training loss is diverging"'),
        ('          and on (job, instance, run_id) plasticity_run_status{status="running"} == 1\n'
         f'{_SHIFT_GUARD}'
         '        for: 2m\n'
         '        labels:\n'
         '          severity: critical\n'
         '        annotations:\n'
         '          summary: "Run {{ $labels.run_id }}: training loss is diverging"'),
    ),
    # ... nor is the loss of a new domain (the apoptosis family's `shift` phase)
    # while the baseline still holds the old one.
    "LossDiverging across a domain shift": (
        "LossDiverging", "alerts.yml",
        f"{_SHIFT_GUARD}        for: 2m\n        labels:\n          severity: critical\n",
        "        for: 2m\n        labels:\n          severity: critical\n",
    ),
    # ... and a task stream's best task is no reference for the current one.
    "AccuracyDrop for task streams": (
        "AccuracyDrop", "alerts.yml",
        '\n          unless on (job, instance, run_id) plasticity_run_info{experiment="plasticity"}\n', "\n",
    ),
    # Neurogenesis: a level that may not grow (cap 0, the CL variants) is
    # always "at its cap" with outliers left.
    "NdlRunawayGrowth without the cap > 0 guard": (
        "NdlRunawayGrowth", "alerts.yml",
        ("          and plasticity_ndl_stage_growth_limit > 0\n"), "",
    ),
    # Without `for`, a stage's transient disturbance of an old class counts as forgetting.
    "NdlClassForgetting without for": (
        "NdlClassForgetting", "alerts.yml",
        ('ratio_baseline > 2\n'
         '          and on (job, instance, run_id) plasticity_run_status{status="running"} == 1\n'
         '        for: 30m'),
        ('ratio_baseline > 2\n'
         '          and on (job, instance, run_id) plasticity_run_status{status="running"} == 1\n'
         '        for: 0m'),
    ),
    # Apoptosis: one storm of bursts is one alert, not one per burst (each
    # lull would resolve it and the next burst page again) ...
    "ApoptosisDeathStorm without keep_firing_for": (
        "ApoptosisDeathStorm", "alerts.yml", "        keep_firing_for: 10m\n", "",
    ),
    # ... deaths are summed over layers (each layer alone may stay under the limit) ...
    "ApoptosisDeathStorm per layer": (
        "ApoptosisDeathStorm", "alerts.yml",
        "sum by (job, instance, run_id, sweep, run, trial) (rate(plasticity_apoptosis_units_died_total[1m]))",
        "max by (job, instance, run_id, sweep, run, trial) (rate(plasticity_apoptosis_units_died_total[1m]))",
    ),
    # ... and a limit of 0 switches the check off instead of firing on every death.
    "ApoptosisDeathStorm without the limit > 0 guard": (
        "ApoptosisDeathStorm", "alerts.yml",
        "(plasticity_apoptosis_death_storm_limit > 0)", "(plasticity_apoptosis_death_storm_limit)",
    ),
    # A jump counted before the first scrape, and one seen by the run's last scrape only.
    "PerplexityJumpAfterChange via increase()": (
        "PerplexityJumpAfterChange", "alerts.yml",
        "max_over_time(plasticity_perplexity_jumps_total[10m]) > 0",
        "increase(plasticity_perplexity_jumps_total[10m]) > 0",
    ),
    "PerplexityJumpAfterChange on the last value": (
        "PerplexityJumpAfterChange", "alerts.yml",
        "max_over_time(plasticity_perplexity_jumps_total[10m]) > 0",
        "plasticity_perplexity_jumps_total > 0",
    ),
    # Heads: a breach counted before the first scrape, and one seen by the run's last scrape only ...
    "HeadsPrunedPastQuality via increase()": (
        "HeadsPrunedPastQuality", "alerts.yml",
        "max_over_time(plasticity_heads_quality_breaches_total[10m]) > 0",
        "increase(plasticity_heads_quality_breaches_total[10m]) > 0",
    ),
    "HeadsPrunedPastQuality on the last values": (
        "HeadsPrunedPastQuality", "alerts.yml",
        ("              max_over_time(plasticity_heads_quality_ratio[10m])\n"
         "            )\n"
         "            > on (job, instance, run_id, sweep, run, trial)\n"
         "            max by (job, instance, run_id, sweep, run, trial) (\n"
         "              max_over_time(plasticity_heads_quality_limit_ratio[10m])"),
        ("              plasticity_heads_quality_ratio\n"
         "            )\n"
         "            > on (job, instance, run_id, sweep, run, trial)\n"
         "            max by (job, instance, run_id, sweep, run, trial) (\n"
         "              plasticity_heads_quality_limit_ratio"),
    ),
    # ... and the default stop (a breach rolled back: the model is as good as before) pages nobody.
    "HeadsPrunedPastQuality on every breach": (
        "HeadsPrunedPastQuality", "alerts.yml",
        ("          (\n"
         "            max by (job, instance, run_id, sweep, run, trial) (\n"
         "              max_over_time(plasticity_heads_quality_ratio[10m])\n"
         "            )\n"
         "            > on (job, instance, run_id, sweep, run, trial)\n"
         "            max by (job, instance, run_id, sweep, run, trial) (\n"
         "              max_over_time(plasticity_heads_quality_limit_ratio[10m])\n"
         "            )\n"
         "          )\n"
         "          and on (job, instance, run_id, sweep, run, trial)\n"), "",
    ),
    # The warm-up warning: a detection due soon after half the plan, and an ended run, stay quiet.
    "HeadsWarmupNotStable without for": (
        "HeadsWarmupNotStable", "alerts.yml",
        ("          and on (job, instance, run_id) plasticity_heads_warmup_stable == 0\n"
         '          and on (job, instance, run_id) plasticity_run_status{status="running"} == 1\n'
         "        for: 10m"),
        ("          and on (job, instance, run_id) plasticity_heads_warmup_stable == 0\n"
         '          and on (job, instance, run_id) plasticity_run_status{status="running"} == 1\n'
         "        for: 0m"),
    ),
    "HeadsWarmupNotStable without the running guard": (
        "HeadsWarmupNotStable", "alerts.yml",
        ("          and on (job, instance, run_id) plasticity_heads_warmup_stable == 0\n"
         '          and on (job, instance, run_id) plasticity_run_status{status="running"} == 1\n'),
        "          and on (job, instance, run_id) plasticity_heads_warmup_stable == 0\n",
    ),
    # Loss of plasticity: against an hour ago instead of the run's best, a
    # slow job (hours per task) losing 2-3 points per task never fires.
    "PlasticityLoss against an hour ago": (
        "PlasticityLoss", "recording.yml",
        "max_over_time(run_id:plasticity_online_accuracy_ratio:avg1h[7d])",
        "run_id:plasticity_online_accuracy_ratio:avg1h offset 1h",
    ),
}


#: Alerts whose selected unit test cases passed against the real rules (each
#: alert's selection is checked once, however many mutations it has).
_UNMUTATED_PASS: set[str] = set()


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_unit_tests_reject_naive_rules(name: str, tmp_path: Path) -> None:
    """With one rule replaced by its naive version, that alert's unit test
    cases fail (only those cases run, to keep this fast)."""
    alert, target, old, new = MUTATIONS[name]
    rules, tests = tmp_path / "rules", tmp_path / "tests"
    rules.mkdir()
    tests.mkdir()
    for f in RULE_FILES:
        text = f.read_text()
        if f.name == target:
            assert old in text, f"mutation {name!r} no longer applies: update it with the rule"
            text = text.replace(old, new)
        (rules / f.name).write_text(text)
    selected = []
    for f in TEST_FILES:
        data = yaml.safe_load(f.read_text())
        data["rule_files"] = [str(rules / Path(r).name) for r in data["rule_files"]]
        data["tests"] = [t for t in data["tests"]
                         if any(c["alertname"] == alert for c in t.get("alert_rule_test", []))]
        if data["tests"]:
            selected.append(tests / f.name)
            selected[-1].write_text(yaml.safe_dump(data))
    assert selected, f"no unit test case for {alert}"
    # Unmutated, the selected cases pass; mutated, they fail.
    if alert not in _UNMUTATED_PASS:
        for f in selected:
            original = yaml.safe_load(f.read_text())
            original["rule_files"] = [str(r) for r in RULE_FILES]
            (tmp_path / f"orig_{f.name}").write_text(yaml.safe_dump(original))
        ok = _promtool("test", "rules", *(str(tmp_path / f"orig_{f.name}") for f in selected))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        _UNMUTATED_PASS.add(alert)
    res = _promtool("test", "rules", *map(str, selected))
    out = res.stdout + res.stderr
    assert res.returncode != 0, f"unit tests still pass with {name}:\n{out}"
    assert f"alertname: {alert}," in out, out
    # The mutated rules are still valid: the failure is the tests' doing.
    assert _promtool("check", "rules", *(str(rules / f.name) for f in RULE_FILES)).returncode == 0


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_real_prometheus_keeps_file_sd_labels_and_loads_rules(tmp_path: Path) -> None:
    """A real Prometheus with the shipped config (local paths) scrapes a trial
    registered by the engine's TargetsFile with sweep/run/trial on its series,
    and loads every rule group healthy."""
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    binary = require_binary("prometheus")
    registry = CollectorRegistry()
    Gauge("plasticity_train_loss", "x", ["run_id"], registry=registry).labels("abc123").set(0.5)
    target_port, prom_port = free_port(), free_port()
    server, _thread = start_http_server(target_port, addr="127.0.0.1", registry=registry)
    sd = tmp_path / "file_sd"
    TargetsFile(sd / "demo.json").add("abc123", f"127.0.0.1:{target_port}",
                                      {"sweep": "demo", "run": "abc123", "trial": "007"})
    cfg = render_configs(tmp_path, prometheus_port=prom_port, alertmanager_port=free_port(), engine_targets=[],
                         file_sd_dir=sd, slack_url_file=tmp_path / "slack_webhook_url",
                         scrape_interval="1s", evaluation_interval="1s").prometheus
    proc = start([binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
                   f"--web.listen-address=127.0.0.1:{prom_port}"], tmp_path / "prometheus.log")
    base = f"http://127.0.0.1:{prom_port}"
    query = urllib.parse.quote('plasticity_train_loss{job="engine_trials"}')
    try:
        deadline, result = time.monotonic() + 30, list[Any]()
        while time.monotonic() < deadline and not result:
            time.sleep(0.5)
            try:
                result = _get(f"{base}/api/v1/query?query={query}")["data"]["result"]
            except OSError:
                continue
        assert result, (tmp_path / "prometheus.log").read_text()[-2000:]
        labels = result[0]["metric"]
        assert {k: labels.get(k) for k in ("sweep", "run", "trial", "run_id")} == {
            "sweep": "demo", "run": "abc123", "trial": "007", "run_id": "abc123"}
        groups = _get(f"{base}/api/v1/rules")["data"]["groups"]
        loaded = {r["name"] for g in groups for r in g["rules"]}
        assert loaded == {r.get("alert") or r["record"] for r in _rules()}
        # Health is "unknown" until a rule's first evaluation, "err" on failure.
        deadline, bad = time.monotonic() + 10, {"": "not evaluated"}
        while bad and time.monotonic() < deadline:
            time.sleep(0.5)
            rules = [r for g in _get(f"{base}/api/v1/rules")["data"]["groups"] for r in g["rules"]]
            bad = {r["name"]: r.get("lastError") or r.get("health") for r in rules if r.get("health") != "ok"}
        assert not bad, bad
    finally:
        stop(proc)
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("ci", ["true", ""])
def test_missing_binary_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci == "true" else pytest.skip.Exception
    with pytest.raises(expected, match="apt-get install -y prometheus-alertmanager"):
        require_binary("amtool")

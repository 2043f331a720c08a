"""Rules, rule tests, Alertmanager files and the runbook against the engine's
metric catalog and each other: only exported metrics and labels, alert
metadata complete, runbook sections and alerts one-to-one."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from binaries import ALERTMANAGER_YML, ROOT, RULE_TESTS_DIR, RULES_DIR, TEMPLATES_DIR

from engine.registry import experiment_names
from engine.telemetry.catalog import BY_NAME, CATALOG, exposition_names
from engine.telemetry.events import PHASES, RUN_STATUSES, SEED_STATES

RUNBOOK = ROOT / "monitoring" / "runbook.md"
#: Labels Prometheus attaches to every scraped series (file_sd adds sweep/run/trial).
TARGET_LABELS = {"job", "instance", "sweep", "run", "trial", "node"}  # scrape + sweep file_sd labels (runner._register)
#: Exposition name (histograms expand to _bucket/_sum/_count) -> catalog spec.
SERIES = {name: spec for spec in CATALOG for name in exposition_names(spec)}
#: One-hot label values the engine exports, and the registered experiment families
#: (run_info's `experiment`, which rules use to single out a family).
ENUMS = {"status": set(RUN_STATUSES), "state": set(SEED_STATES), "phase": set(PHASES),
         "experiment": set(experiment_names())}
# A metric name, not the middle of a recording rule name (level:metric:ops).
METRIC_RE = re.compile(r"(?<![\w:])plasticity_[a-z0-9_]+(?![\w:])")
RECORDED_RE = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")
SELECTOR_RE = re.compile(r"(?<![\w:])(plasticity_[a-z0-9_]+|up)\s*\{([^}]*)\}")
MATCHER_RE = re.compile(r"(\w+)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"")
GROUPING_RE = re.compile(r"\b(?:by|on|without|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def _rules() -> list[dict[str, Any]]:
    return [r for f in sorted(RULES_DIR.glob("*.yml"))
            for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]


ALERTS = {r["alert"]: r for r in _rules() if "alert" in r}
RECORDS = {r["record"]: r for r in _rules() if "record" in r}
ALLOWED_LABELS = {lbl for spec in CATALOG for lbl in spec.labels} | TARGET_LABELS | {"le"}


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _runbook_sections() -> dict[str, str]:
    """Anchor -> section text, for every level-2 heading."""
    parts = re.split(r"^## (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
    return {_slug(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}


def _test_docs() -> list[dict[str, Any]]:
    return [yaml.safe_load(f.read_text()) for f in sorted(RULE_TESTS_DIR.glob("*.yml"))]


def _check_metric_names(text: str, where: str) -> None:
    for name in METRIC_RE.findall(text):
        assert name in SERIES, f"{where}: {name} is not exported by the engine (catalog)"


def test_rules_exist() -> None:
    assert ALERTS and RECORDS


@pytest.mark.parametrize("name", sorted(ALERTS) + sorted(RECORDS))
def test_rule_uses_catalog_metrics_and_labels(name: str) -> None:
    rule = ALERTS.get(name) or RECORDS[name]
    expr = rule["expr"]
    assert METRIC_RE.search(expr) or RECORDED_RE.search(expr), f"{name} reads no engine series"
    _check_metric_names(expr, name)
    for recorded in RECORDED_RE.findall(expr):
        assert recorded in RECORDS, f"{name} uses undefined recording rule {recorded}"
    for metric, matchers in SELECTOR_RE.findall(expr):
        allowed = (set(SERIES[metric].labels) if metric in SERIES else set()) | TARGET_LABELS
        if metric in SERIES and SERIES[metric].kind == "histogram":
            allowed.add("le")
        for label, op, value in MATCHER_RE.findall(matchers):
            assert label in allowed, f"{name}: {metric} has no label {label!r}"
            if label in ENUMS and op == "=":
                assert value in ENUMS[label], f"{name}: {label}={value!r} is never exported"
            if label == "job":
                assert set(value.split("|")) <= {"engine", "engine_trials"}, f"{name}: unknown job {value!r}"
    for group in GROUPING_RE.findall(expr):
        for label in filter(None, (x.strip() for x in group.split(","))):
            assert label in ALLOWED_LABELS, f"{name}: grouping label {label!r} is not exported"
    for text in rule.get("annotations", {}).values():
        for label in re.findall(r"\$labels\.(\w+)", text):
            assert label in ALLOWED_LABELS, f"{name}: annotation uses unknown label {label!r}"


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_recording_rule_name(name: str) -> None:
    assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", name), name
    level, metric, _ops = name.split(":")
    counters = {s.name.removesuffix("_total") for s in CATALOG if s.kind == "counter"}
    assert metric in BY_NAME or metric in counters, f"{name}: {metric} is not a catalog metric"
    assert "run_id" in level, f"{name}: level should say the series stay per run"


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_metadata(name: str) -> None:
    rule = ALERTS[name]
    assert re.fullmatch(r"[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+", name), f"{name}: not CamelCase"
    assert rule["labels"]["severity"] in {"critical", "warning"}
    ann = rule["annotations"]
    assert ann.get("summary", "").strip()
    for label in ("run_id", "sweep", "trial"):
        assert f"$labels.{label}" in ann["description"], f"{name}: description does not name {label}"
    assert ann.get("value", "").strip(), f"{name}: no value annotation for the Slack message"
    m = re.fullmatch(r"monitoring/runbook\.md#([a-z0-9_-]+)", ann["runbook_url"])
    assert m, f"{name}: runbook_url {ann['runbook_url']!r} is not monitoring/runbook.md#<anchor>"
    assert m.group(1) in _runbook_sections(), f"{name}: no runbook section #{m.group(1)}"
    assert m.group(1) == _slug(name), f"{name}: runbook_url should point at its own section"


def test_runbook_sections_are_alerts() -> None:
    sections = _runbook_sections()
    assert set(sections) == {_slug(a) for a in ALERTS}
    for name in ALERTS:
        text = sections[_slug(name)]
        for part in ("**What it means.**", "**First checks.**", "**How to silence.**"):
            assert part in text, f"runbook {name}: missing {part}"
        assert re.search(rf"amtool .*silence add[\s\\]+alertname={name} run_id=", text), \
            f"runbook {name}: no amtool silence example"
        assert f"**Severity:** {ALERTS[name]['labels']['severity']}." in text, f"runbook {name}: severity"


def test_runbook_and_alertmanager_files_name_only_catalog_metrics() -> None:
    for path in (RUNBOOK, ALERTMANAGER_YML, *TEMPLATES_DIR.glob("*.tmpl")):
        _check_metric_names(path.read_text(), str(path.relative_to(ROOT)))


def test_rule_unit_tests_use_real_series() -> None:
    """Input series of the rule unit tests have the names and labels the
    engine (and Prometheus's target labels) really produce."""
    seen = 0
    for doc in _test_docs():
        for test in doc["tests"]:
            for series in test.get("input_series", []):
                m = re.fullmatch(r"(\w+)\{(.*)\}", series["series"])
                assert m, series["series"]
                name, labels = m.group(1), {k: v for k, _op, v in MATCHER_RE.findall(m.group(2))}
                if name == "up":
                    assert set(labels) <= TARGET_LABELS, series
                    continue
                assert name in SERIES, f"{name} is not exported by the engine"
                spec = SERIES[name]
                assert set(spec.labels) <= set(labels), f"{series}: missing labels {spec.labels}"
                assert set(labels) <= set(spec.labels) | TARGET_LABELS, f"{series}: unknown labels"
                assert {"job", "instance"} <= set(labels), f"{series}: no target labels"
                for label, values in ENUMS.items():
                    assert labels.get(label, next(iter(values))) in values, series
                seen += 1
            for case in test.get("promql_expr_test", []):
                _check_metric_names(case["expr"], "promql_expr_test")
    assert seen

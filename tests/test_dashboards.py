"""Grafana dashboards: generated == committed, and lint rules no Grafana server is needed for.

Each lint is a function returning a list of problems, checked on the committed
JSON (must be empty) and on a deliberately broken copy (must not be), so
every check is shown able to fail. PromQL syntax and the "absent label matches
``=~".*"``" assumption are checked with the real ``promtool``.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.telemetry.catalog import BY_NAME, CATALOG
from monitoring import dashboards as d

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "grafana" / "dashboards"
DATASOURCE_FILE = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
RUN_VARS = ("job", "sweep", "run", "trial", "layer")
# Labels Prometheus attaches from the scrape config and file_sd (not in the catalog).
TARGET_LABELS = {"job", "instance", "sweep", "run", "trial"}
HIST_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC = re.compile(r"plasticity_[a-z0-9_]+")
SELECTOR = re.compile(r"(plasticity_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"')
RANGE_FUNCS = re.compile(r"\b(rate|irate|increase)\s*\(")

Dash = dict[str, Any]
Problems = list[str]


def committed() -> dict[str, Dash]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(COMMITTED.glob("*.json"))}


@pytest.fixture(scope="module")
def dashboards() -> dict[str, Dash]:
    return committed()


def panels(dash: Dash) -> Iterator[dict[str, Any]]:
    for p in dash.get("panels", []):
        if p.get("type") != "row":
            yield p
        yield from (c for c in p.get("panels", []) if c.get("type") != "row")


def all_exprs(dash: Dash) -> list[tuple[str, str]]:
    """(where, expr) for panel queries, annotations and variable queries."""
    out = [(f"panel {t!r}", e) for _, t, e in d.panel_queries(dash)]
    out += [(f"annotation {n!r}", e) for _, n, e in d.annotation_queries(dash)]
    out += [(f"variable ${n}", q) for n, q in d.variable_queries(dash)]
    return out


def catalog_name(series: str) -> str:
    """Catalog name of an exposed series name (histogram suffixes map to the base)."""
    for suffix in HIST_SUFFIXES:
        base = series.removesuffix(suffix)
        if base != series and base in BY_NAME and BY_NAME[base].kind == "histogram":
            return base
    return series


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path:
        return path
    msg = f"{binary} is not installed (Debian: apt-get install prometheus)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def promtool_run(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *map(str, args)], check=False, capture_output=True, text=True, timeout=60)


# -- lint checks: each returns its problems ----------------------------------

def check_variables(dash: Dash) -> Problems:
    items = {v.get("name"): v for v in (dash.get("templating") or {}).get("list", [])}
    bad = [] if list(items) == list(d.VARIABLES) else [f"{dash.get('uid')}: variables {list(items)}"]
    ds = items.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        bad.append(f"{dash.get('uid')}: $datasource must be a Prometheus datasource variable")
    for name in RUN_VARS:
        v = items.get(name, {})
        # "All" must be the regex .*, which also matches series without the label.
        if v.get("type") != "query" or not v.get("includeAll") or v.get("allValue") != ".*":
            bad.append(f"{dash.get('uid')}: ${name} must be a query variable with All = .*")
        if (v.get("datasource") or {}).get("uid") != "${datasource}":
            bad.append(f"{dash.get('uid')}: ${name} must query ${{datasource}}")
    return bad


def check_units_and_datasources(dash: Dash) -> Problems:
    bad = []
    for p in panels(dash):
        title = p.get("title")
        if not ((p.get("fieldConfig") or {}).get("defaults") or {}).get("unit"):
            bad.append(f"{title!r}: no unit")
        refs = [p.get("datasource") or {}] + [t.get("datasource") or {} for t in p.get("targets", [])]
        if not p.get("targets"):
            bad.append(f"{title!r}: no query")
        for ref in refs:
            if ref.get("uid") != "${datasource}" or ref.get("type") != "prometheus":
                bad.append(f"{title!r}: datasource {ref} does not use $datasource")
    for a in (dash.get("annotations") or {}).get("list", []):
        if (a.get("datasource") or {}).get("uid") != "${datasource}":
            bad.append(f"annotation {a.get('name')!r}: datasource does not use $datasource")
    return bad


def _call_args(expr: str, start: int) -> str:
    """Text inside the parentheses opened at ``expr[start]``."""
    depth = 0
    for i in range(start, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[i], 0)
        if depth == 0:
            return expr[start + 1:i]
    raise ValueError(f"unbalanced parentheses in {expr!r}")


def check_rate_interval(dash: Dash) -> Problems:
    bad = []
    for where, expr in all_exprs(dash):
        for m in RANGE_FUNCS.finditer(expr):
            args = _call_args(expr, m.end() - 1).strip()
            if not args.endswith("[$__rate_interval]"):
                bad.append(f"{where}: {m.group(1)}() without [$__rate_interval]: {expr}")
        for rng in re.findall(r"\[([^\]]*)\]", expr):
            if rng != "$__rate_interval":
                bad.append(f"{where}: range [{rng}] is not $__rate_interval: {expr}")
    return bad


def check_catalog(dash: Dash) -> Problems:
    bad = []
    for where, expr in all_exprs(dash):
        names = METRIC.findall(expr)
        if not names and "ALERTS" not in expr:
            bad.append(f"{where}: names no engine metric: {expr}")
        bad += [f"{where}: {n} is not in the catalog" for n in names if catalog_name(n) not in BY_NAME]
    return bad


def check_selectors(dash: Dash) -> Problems:
    """Label matchers exist on their metric, and every selector filters by the run variables."""
    bad = []
    for where, expr in all_exprs(dash):
        if where.startswith("variable"):
            continue  # cascading variables filter by the variables above them only
        selectors = SELECTOR.findall(expr)
        if not selectors and "ALERTS" not in expr:
            bad.append(f"{where}: no filtered selector: {expr}")
        for name, body in selectors:
            spec = BY_NAME.get(catalog_name(name))
            if spec is None:
                continue  # reported by check_catalog
            labels = {m[0] for m in MATCHER.findall(body)}
            allowed = set(spec.labels) | TARGET_LABELS
            bad += [f"{where}: {name} has no label {lbl!r}" for lbl in sorted(labels - allowed)]
            for var, lbl in (("job", "job"), ("sweep", "sweep"), ("run", "run_id"), ("trial", "trial")):
                if f'{lbl}=~"${var}"' not in body:
                    bad.append(f'{where}: {name} selector lacks {lbl}=~"${var}"')
            if "layer" in spec.labels and 'layer=~"$layer"' not in body:
                bad.append(f'{where}: {name} selector lacks layer=~"$layer"')
    return bad


CHECKS: dict[str, Callable[[Dash], Problems]] = {
    "variables": check_variables,
    "units_and_datasources": check_units_and_datasources,
    "rate_interval": check_rate_interval,
    "catalog": check_catalog,
    "selectors": check_selectors,
}


def _first_target(dash: Dash) -> dict[str, Any]:
    return next(p for p in panels(dash) if p.get("targets"))["targets"][0]


def _break_variables(dash: Dash) -> None:
    dash["templating"]["list"] = [v for v in dash["templating"]["list"] if v["name"] != "trial"]


def _break_units(dash: Dash) -> None:
    next(panels(dash))["fieldConfig"]["defaults"].pop("unit")


def _break_rate(dash: Dash) -> None:
    _first_target(dash)["expr"] = 'rate(plasticity_steps_total{job=~"$job"}[5m])'


def _break_catalog(dash: Dash) -> None:
    _first_target(dash)["expr"] = 'plasticity_no_such_metric{job=~"$job"}'


def _break_selectors(dash: Dash) -> None:
    _first_target(dash)["expr"] = 'plasticity_train_loss{run=~"$run", layer=~"$layer"}'


BREAKERS: dict[str, Callable[[Dash], None]] = {
    "variables": _break_variables,
    "units_and_datasources": _break_units,
    "rate_interval": _break_rate,
    "catalog": _break_catalog,
    "selectors": _break_selectors,
}


# -- generated == committed ----------------------------------------------------

def test_committed_json_is_what_the_code_generates(tmp_path: Path) -> None:
    assert d.main(["--out", str(tmp_path)]) == 0
    generated = {p.name: p.read_text(encoding="utf-8") for p in sorted(tmp_path.glob("*.json"))}
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in sorted(COMMITTED.glob("*.json"))}
    assert sorted(on_disk) == sorted(generated), "stale or missing dashboard files: run python -m monitoring.dashboards"
    for name, text in generated.items():
        assert on_disk[name] == text, f"grafana/dashboards/{name} is stale: run python -m monitoring.dashboards"


def test_output_is_stable_and_formatted(tmp_path: Path) -> None:
    first = {p.name: p.read_bytes() for p in d.write(tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in d.write(tmp_path / "b")}
    assert first == second
    for name, raw in first.items():
        text = raw.decode("utf-8")
        assert text.endswith("}\n") and not text.endswith("\n\n"), name
        assert text.splitlines()[1].startswith('  "') and not text.splitlines()[1].startswith('   '), name
        assert json.loads(text, object_pairs_hook=_sorted_object) is not None, name


def _sorted_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    assert keys == sorted(keys), f"keys not sorted: {keys}"
    return dict(pairs)


def test_check_mode_fails_on_any_difference(tmp_path: Path) -> None:
    d.write(tmp_path)
    assert d.main(["--check", "--out", str(tmp_path)]) == 0
    target = tmp_path / "plasticity-seeds.json"
    target.write_text(target.read_text().replace("0.25", "0.3", 1))
    assert d.main(["--check", "--out", str(tmp_path)]) == 1
    assert d.stale(tmp_path) == ["plasticity-seeds.json"]
    target.unlink()
    assert d.stale(tmp_path) == ["plasticity-seeds.json"]


def test_sdk_is_the_pinned_grafana_build() -> None:
    """Another SDK build renders different JSON; its Grafana version must be the one compose runs."""
    pinned = d.SDK_REQUIREMENT.split("==", 1)[1]
    assert importlib.metadata.version("grafana-foundation-sdk") == pinned, f"pip install '{d.SDK_REQUIREMENT}'"
    grafana = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]["image"]
    grafana_minor = grafana.rsplit(":", 1)[1].split(".")[:2]
    assert pinned.split("!", 1)[1].split(".")[:2] == grafana_minor, (pinned, grafana)


def test_fixed_uids(dashboards: dict[str, Dash]) -> None:
    assert {stem: dash["uid"] for stem, dash in dashboards.items()} == {uid: uid for uid in d.UIDS}
    assert set(d.UIDS) == {"plasticity-overview", "plasticity-seeds", "plasticity-system",
                           "plasticity-replay", "plasticity-lop", "plasticity-apoptosis", "plasticity-heads"}
    assert dict(d.FAMILY_DASHBOARDS) == {"plasticity-replay": "neurogenesis", "plasticity-lop": "plasticity",
                                         "plasticity-apoptosis": "apoptosis", "plasticity-heads": "heads"}


# -- lint rules ------------------------------------------------------------------

@pytest.mark.parametrize("check", sorted(CHECKS))
def test_lint(dashboards: dict[str, Dash], check: str) -> None:
    problems = [p for dash in dashboards.values() for p in CHECKS[check](dash)]
    assert problems == []


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_lint_catches_a_broken_dashboard(dashboards: dict[str, Dash], check: str) -> None:
    broken = copy.deepcopy(dashboards["plasticity-overview"])
    BREAKERS[check](broken)
    assert CHECKS[check](broken), f"{check} did not notice the defect"


def test_every_catalog_metric_family_is_charted(dashboards: dict[str, Dash]) -> None:
    """The dashboards cover the catalog except metrics with nothing to chart."""
    used = {catalog_name(n) for dash in dashboards.values() for _, e in all_exprs(dash) for n in METRIC.findall(e)}
    # build_info has no run_id label, so the run filter cannot apply to it.
    assert {m.name for m in CATALOG} - used == {"plasticity_build_info"}


def test_required_panels(dashboards: dict[str, Dash]) -> None:
    def exprs(uid: str) -> str:
        return "\n".join(e for _, e in all_exprs(dashboards[uid]))

    def types(uid: str) -> dict[str, str]:
        return {p["title"]: p["type"] for p in panels(dashboards[uid])}

    ov, seeds, sysd = exprs("plasticity-overview"), exprs("plasticity-seeds"), exprs("plasticity-system")
    assert types("plasticity-overview")["Runs"] == "table"
    for m in ("run_info", "run_status", "training_progress_ratio", "val_accuracy_ratio"):
        assert f"plasticity_{m}{{" in ov
    assert "time() - plasticity_last_step_timestamp_seconds{" in ov
    assert 'ALERTS{alertstate="firing"' in ov
    assert "rate(plasticity_epochs_total{" in ov and "rate(plasticity_steps_total{" in ov
    assert types("plasticity-seeds")["Seed state"] == "state-timeline"
    drift = next(p for p in panels(dashboards["plasticity-seeds"]) if p["title"] == "Seed drift")
    steps = drift["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 0.15, 0.25]  # SeedDriftHigh, SeedDriftCritical
    assert any("germinations_total" in e for _, _, e in d.annotation_queries(dashboards["plasticity-seeds"]))
    assert "plasticity_plateau_epochs{" in seeds and "plasticity_plateau_patience_epochs{" in seeds
    assert "histogram_quantile(0.9, sum by (le, run_id) (rate(plasticity_epoch_duration_seconds_bucket{" in sysd
    for m in ("device_memory_used_bytes", "device_memory_limit_bytes", "sink_errors_total",
              "neuron_activation_quantile", "layer_dead_units"):
        assert f"plasticity_{m}{{" in sysd


def _threshold_steps(dash: Dash, title: str) -> list[Any]:
    panel = next(p for p in panels(dash) if p["title"] == title)
    return [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]


def test_required_family_panels(dashboards: dict[str, Dash]) -> None:
    """Issue 4 (replay) and issue 5 (loss of plasticity): the panels they ask for,
    each family's metrics only, and alert thresholds drawn as the rules have them."""
    replay, lop, apo = dashboards["plasticity-replay"], dashboards["plasticity-lop"], dashboards["plasticity-apoptosis"]
    for dash, family in ((replay, "neurogenesis"), (lop, "plasticity"), (apo, "apoptosis"),
                         (dashboards["plasticity-heads"], "heads")):
        names = {catalog_name(n) for _, e in all_exprs(dash) for n in METRIC.findall(e)}
        own = {m.name for m in CATALOG if m.families == (family,)}
        other = {m.name for m in CATALOG if m.families and family not in m.families}
        assert own <= names, f"{family}: not charted {sorted(own - names)}"
        assert not names & other, f"{family}: charts other families' metrics {sorted(names & other)}"
    rx = "\n".join(e for _, e in all_exprs(replay))
    for m in ("ndl_class_reconstruction_error", "ndl_class_baseline_error", "ndl_layer_reconstruction_error",
              "ndl_outlier_fraction_ratio", "ndl_outlier_fraction_limit_ratio", "layer_units",
              "ndl_stage", "ndl_current_class"):
        assert f"plasticity_{m}{{" in rx, m
    assert "increase(plasticity_ndl_neurons_added_total{" in rx and "rate(plasticity_ndl_replay_samples_total{" in rx
    lx = "\n".join(e for _, e in all_exprs(lop))
    for m in ("layer_effective_rank", "layer_stable_rank", "layer_approximate_rank", "online_accuracy_ratio",
              "online_loss", "layer_weight_abs_mean", "layer_grad_norm"):
        assert f"plasticity_{m}{{" in lx, m
    assert "increase(plasticity_units_replaced_total{" in lx and "rate(plasticity_diagnostics_seconds_total{" in lx
    types = {p["title"]: p["type"] for p in panels(lop)}
    assert types["Dead unit fraction by layer"] == types["Dormant unit fraction by layer"] == "heatmap"
    # Thresholds: those of NdlClassForgetting, LayerRankCollapse, LayerDeadUnitsHigh, LayerDormantUnitsHigh.
    assert _threshold_steps(replay, "Forgetting ratio (error / baseline)") == [None, 2]
    assert _threshold_steps(lop, "Effective rank / width") == [None, 0.1]
    assert _threshold_steps(lop, "Dead fraction") == [None, 0.25]
    assert _threshold_steps(lop, "Dormant fraction") == [None, 0.5]


def test_required_apoptosis_panels(dashboards: dict[str, Dash]) -> None:
    """The apoptosis family's panels, its alerts' signals next to their limits, and the structural annotation."""
    apo = dashboards["plasticity-apoptosis"]
    ax = "\n".join(e for _, e in all_exprs(apo))
    for m in ("train_loss", "val_loss", "val_perplexity", "tokens_per_second", "layer_units",
              "apoptosis_fading_units", "apoptosis_unit_utility_quantile", "apoptosis_unit_age_steps",
              "apoptosis_max_generation", "perplexity_jump_ratio", "perplexity_jump_limit_ratio",
              "apoptosis_death_storm_limit"):
        assert f"plasticity_{m}{{" in ax, m
    for m in ("apoptosis_units_born_total", "apoptosis_units_died_total", "steps_total"):
        assert f"rate(plasticity_{m}{{" in ax, m
    titles = {p["title"]: p for p in panels(apo)}
    # What ApoptosisDeathStorm compares: deaths summed over layers per step, against the limit.
    storm = [t["expr"] for t in titles["Deaths per step vs storm limit"]["targets"]]
    assert storm[0].startswith("sum by (run_id, sweep, trial) (rate(plasticity_apoptosis_units_died_total{")
    assert "plasticity_apoptosis_death_storm_limit{" in storm[1]
    assert 'ALERTS{alertstate="firing"' in titles["Firing alerts"]["targets"][0]["expr"]
    assert titles["Firing alerts"]["type"] == "table"
    names = [n for _, n, _e in d.annotation_queries(apo)]
    assert names == ["Structural changes"]
    note = next(a for a in apo["annotations"]["list"] if a.get("name") == "Structural changes")
    assert "{{quality_before}} -> {{quality_after}}" in note["textFormat"]


def test_required_heads_panels(dashboards: dict[str, Dash]) -> None:
    """The heads family's panels: the shared language-model row, per-layer head counts and changes, per-head
    scores without the NaN slots of pruned heads, both heads alerts' signals next to their limits, the
    perplexity jump, and annotations for structural changes, decision rounds and the warm-up detection."""
    hd = dashboards["plasticity-heads"]
    hx = "\n".join(e for _, e in all_exprs(hd))
    for m in ("train_loss", "val_loss", "val_perplexity", "tokens_per_second", "text_samples_total",
              "training_phase", "heads_alive", "heads_pruned_total", "heads_cloned_total",
              "heads_decision_rounds_total", "heads_warmup_stable", "heads_stable_step", "heads_quality_ratio",
              "heads_quality_limit_ratio", "heads_quality_breaches_total", "perplexity_jump_ratio",
              "perplexity_jump_limit_ratio", "perplexity_jumps_total"):
        assert f"plasticity_{m}{{" in hx, m
    titles = {p["title"]: p for p in panels(hd)}
    apo = {p["title"]: p for p in panels(dashboards["plasticity-apoptosis"])}
    for shared in ("Loss", "Validation perplexity", "Phase", "Text samples", "Tokens per second"):
        assert titles[shared]["targets"] == apo[shared]["targets"], shared  # lm_row, reused
    for title, short in (("Head importance", "head_importance_ratio"),
                         ("Head attention entropy", "head_attention_entropy_nats"),
                         ("Head importance over rounds", "head_importance_ratio")):
        (target,) = titles[title]["targets"]
        assert target["expr"].startswith(f"max by (run_id, layer, head) (plasticity_{short}{{")
        assert target["expr"].endswith("} >= 0)"), target["expr"]  # NaN slots (heads pruned since) dropped
        assert "{{head}}" in target["legendFormat"]
    assert titles["Head importance"]["type"] == "bargauge"
    assert titles["Head importance over rounds"]["type"] == "heatmap"
    # What HeadsPrunedPastQuality compares: the ratio against its (dashed) limit.
    quality = [t["expr"] for t in titles["Quality ratio vs limit"]["targets"]]
    assert "plasticity_heads_quality_ratio{" in quality[0] and "plasticity_heads_quality_limit_ratio{" in quality[1]
    assert titles["Warm-up"]["fieldConfig"]["defaults"]["mappings"][0]["options"]["1"]["text"] == "stable"
    assert 'ALERTS{alertstate="firing"' in titles["Firing alerts"]["targets"][0]["expr"]
    names = [n for _, n, _e in d.annotation_queries(hd)]
    assert names == ["Structural changes", "Decision rounds", "Warm-up stable"]
    note = next(a for a in hd["annotations"]["list"] if a.get("name") == "Structural changes")
    assert "{{quality_before}} -> {{quality_after}}" in note["textFormat"]


def test_family_thresholds_follow_the_rules(tmp_path: Path) -> None:
    """A reworded or re-numbered alert changes (or breaks) the drawn threshold."""
    from monitoring.dashboards_families import alert_number

    text = d.ALERTS_YML.read_text()
    assert alert_number("LayerDeadUnitsHigh", r"plasticity_layer_dead_ratio\s*>\s*([0-9.]+)") == 0.25
    changed = tmp_path / "alerts.yml"
    changed.write_text(text.replace("plasticity_layer_dead_ratio > 0.25", "plasticity_layer_dead_ratio > 0.3"))
    assert alert_number("LayerDeadUnitsHigh", r"plasticity_layer_dead_ratio\s*>\s*([0-9.]+)", changed) == 0.3
    changed.write_text(text.replace("plasticity_layer_dead_ratio > 0.25", "0.25 < plasticity_layer_dead_ratio"))
    with pytest.raises(ValueError, match="LayerDeadUnitsHigh"):
        alert_number("LayerDeadUnitsHigh", r"plasticity_layer_dead_ratio\s*>\s*([0-9.]+)", changed)


def test_seed_state_codes_match_the_value_mappings(dashboards: dict[str, Dash]) -> None:
    panel = next(p for p in panels(dashboards["plasticity-seeds"]) if p["title"] == "Seed state")
    options = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
    from engine.telemetry.events import SEED_STATES

    assert {int(k): v["text"] for k, v in options.items()} == dict(enumerate(SEED_STATES))
    for state in SEED_STATES:
        assert f'state="{state}"}} * {d.seed_state_code(state)}' in panel["targets"][0]["expr"]


def test_datasource_provisioning_matches_the_dashboards() -> None:
    sources = yaml.safe_load(DATASOURCE_FILE.read_text())["datasources"]
    assert len(sources) == 1
    ds = sources[0]
    assert (ds["uid"], ds["type"], ds["url"]) == (d.DATASOURCE_UID, "prometheus", "http://prometheus:9090")
    assert ds.get("isDefault") is True


# -- panel_queries / substitute --------------------------------------------------

def test_panel_queries_lists_every_visible_query() -> None:
    dash = {
        "uid": "u",
        "panels": [
            {"type": "row", "title": "r", "collapsed": True, "panels": [
                {"type": "timeseries", "title": "nested", "targets": [{"expr": "a"}]}]},
            {"type": "timeseries", "title": "p",
             "targets": [{"expr": "b"}, {"expr": "c", "hide": True}, {"refId": "X"}]},
        ],
        "annotations": {"list": [{"name": "n", "expr": "e"}, {"name": "builtin"}]},
    }
    assert d.panel_queries(dash) == [("u", "nested", "a"), ("u", "p", "b")]
    assert d.annotation_queries(dash) == [("u", "n", "e")]


def test_panel_queries_of_the_committed_dashboards(dashboards: dict[str, Dash]) -> None:
    queries = [q for dash in dashboards.values() for q in d.panel_queries(dash)]
    n_targets = sum(len(p.get("targets", [])) for dash in dashboards.values() for p in panels(dash))
    assert len(queries) == n_targets > 30
    assert {uid for uid, _, _ in queries} == set(d.UIDS)
    titles = {(uid, t) for uid, t, _ in queries}
    assert d.EMPTY_WHEN_HEALTHY <= titles


def test_substitute() -> None:
    expr = 'rate(m{job=~"$job", run_id=~"${run}", trial=~"[[trial]]", x=~"${sweep:regex}"}[$__rate_interval])'
    assert d.substitute(expr) == 'rate(m{job=~".*", run_id=~".*", trial=~".*", x=~".*"}[1m])'
    assert d.substitute(expr, {"run": "abc|def", "__rate_interval": "30s", "job": "engine"}) == \
        'rate(m{job=~"engine", run_id=~"abc|def", trial=~".*", x=~".*"}[30s])'
    # Regex backreferences are not variables; $__interval must not eat $__interval_ms-like names.
    assert d.substitute('label_replace(m, "a", "$1", "b", "(.*)")') == 'label_replace(m, "a", "$1", "b", "(.*)")'
    with pytest.raises(KeyError, match=r"\$nope"):
        d.substitute("m{a=~\"$nope\"}")


def test_substitute_leaves_no_variable_in_any_query(dashboards: dict[str, Dash]) -> None:
    for dash in dashboards.values():
        for where, expr in all_exprs(dash):
            if not where.startswith("variable"):
                assert "$" not in d.substitute(expr), (where, expr)


# -- real PromQL engine (promtool) -----------------------------------------------

def test_every_query_parses_in_prometheus(dashboards: dict[str, Dash], tmp_path: Path) -> None:
    """Each substituted panel/annotation query is a valid PromQL expression (promtool parses it)."""
    promtool = need("promtool")
    exprs = [d.substitute(e) for dash in dashboards.values()
             for where, e in all_exprs(dash) if not where.startswith("variable")]
    rules: dict[str, Any] = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:query_{i}:expr", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules))
    ok = promtool_run(promtool, "check", "rules", path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The check itself can fail: a broken expression is rejected.
    rules["groups"][0]["rules"].append({"record": "dashboard:broken:expr", "expr": "rate(plasticity_steps_total[1m]"})
    path.write_text(yaml.safe_dump(rules))
    assert promtool_run(promtool, "check", "rules", path).returncode != 0


def test_all_value_matches_series_without_sweep_labels(dashboards: dict[str, Dash], tmp_path: Path) -> None:
    """A single run has no sweep/trial labels; with "All" (.*) its series still match, a selected sweep does not."""
    promtool = need("promtool")
    expr = next(e for _, t, e in d.panel_queries(dashboards["plasticity-overview"]) if t == "Samples per second")
    series = 'plasticity_samples_per_second{job="engine", instance="engine:8000", run_id="r1"}'

    def case(values: dict[str, str], expected: list[dict[str, Any]]) -> dict[str, Any]:
        return {"expr": d.substitute(expr, values), "eval_time": "1m", "exp_samples": expected}

    tests: dict[str, Any] = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": series, "values": "100 100"}],
        "promql_expr_test": [
            case({}, [{"labels": series, "value": 100}]),
            case({"run": "r1"}, [{"labels": series, "value": 100}]),
            case({"sweep": "basic"}, []),
        ],
    }]}
    path = tmp_path / "test.yml"
    path.write_text(yaml.safe_dump(tests))
    res = promtool_run(promtool, "test", "rules", path)
    assert res.returncode == 0, res.stdout + res.stderr
    # And the harness can fail: claim the selected sweep matches the single run.
    tests["tests"][0]["promql_expr_test"][2]["exp_samples"] = [{"labels": series, "value": 100}]
    path.write_text(yaml.safe_dump(tests))
    assert promtool_run(promtool, "test", "rules", path).returncode != 0

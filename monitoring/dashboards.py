"""Grafana dashboards as code (Grafana Foundation SDK, Grafana 11.6 build).

``python -m monitoring.dashboards`` writes ``grafana/dashboards/<uid>.json``
(the experiment families' dashboards come from :mod:`monitoring.dashboards_families`,
:mod:`monitoring.dashboards_apoptosis` and :mod:`monitoring.dashboards_heads`)
(``--check`` only compares and exits 1 on a difference). Every metric name is
taken from the engine's catalog through :func:`engine.telemetry.catalog.metric`,
so a renamed metric fails here, at generation time.

Template variables: ``datasource`` (Prometheus), ``job``, ``sweep``, ``run``
(values of the engine's ``run_id`` label), ``trial`` and ``layer``. Every
series selector filters with regex matchers whose "All" value is ``.*``: a
matcher that accepts the empty string also accepts a series *without* that
label, so a single run (no ``sweep``/``trial`` target labels) still shows up.

For tests that execute panel queries against a real Prometheus:
:func:`panel_queries` lists them and :func:`substitute` replaces Grafana's
variables with concrete values, e.g.
``substitute(expr, {"run": run_id, "__rate_interval": "30s"})``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.builders import stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from engine.telemetry.catalog import metric
from engine.telemetry.events import SEED_STATES

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
#: Where the committed dashboard JSON lives (mounted into Grafana by compose).
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
#: Alerting rules, whose thresholds the dashboards draw (so the two cannot disagree).
ALERTS_YML = ROOT / "prometheus" / "rules" / "alerts.yml"
#: uid of the provisioned datasource (grafana/provisioning/datasources/prometheus.yml).
DATASOURCE_UID = "prometheus"
#: Names of the template variables every dashboard defines, in display order.
VARIABLES = ("datasource", "job", "sweep", "run", "trial", "layer")
#: Dashboards of the experiment families (monitoring/dashboards_families.py,
#: monitoring/dashboards_apoptosis.py, monitoring/dashboards_heads.py): uid -> family.
FAMILY_DASHBOARDS: Mapping[str, str] = {"plasticity-replay": "neurogenesis", "plasticity-lop": "plasticity",
                                        "plasticity-apoptosis": "apoptosis", "plasticity-heads": "heads"}
UIDS = ("plasticity-overview", "plasticity-seeds", "plasticity-system", *FAMILY_DASHBOARDS)
#: The SDK build the committed JSON comes from: it targets the Grafana that compose runs (11.6).
SDK_REQUIREMENT = "grafana-foundation-sdk==1769699379!11.6.0"
#: Panels whose query is legitimately empty while every run is healthy.
EMPTY_WHEN_HEALTHY = frozenset({("plasticity-overview", "Firing alerts"),
                                ("plasticity-apoptosis", "Firing alerts"), ("plasticity-heads", "Firing alerts")})
#: Values :func:`substitute` uses for variables the caller does not give.
DEFAULT_VALUES: Mapping[str, str] = {
    "datasource": DATASOURCE_UID,
    "job": ".*",
    "sweep": ".*",
    "run": ".*",
    "trial": ".*",
    "layer": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}

DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
# Target labels (job from the scrape config; sweep/trial from file_sd) plus the
# engine's own run_id. Filtering on run_id works for single runs and trials.
RUN = 'job=~"$job", sweep=~"$sweep", run_id=~"$run", trial=~"$trial"'
LAYER = 'layer=~"$layer"'
LEGEND_RUN = "{{run_id}} {{sweep}} {{trial}}"
LEGEND_SEED = "{{run_id}} {{layer}}/{{seed}}"
STATE_COLORS = {"dormant": "text", "training": "blue", "blending": "yellow", "active": "green", "fossilized": "purple", "failed": "red"}


def alert_threshold(alert: str, series: str, path: Path = ALERTS_YML) -> float:
    """The number in ``<series> > <number>`` of alerting rule ``alert``'s expression.

    Raises ``ValueError`` when the rule is missing or compares ``series``
    differently, so a reworded rule fails here, at generation time.
    """
    rules = [r for g in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"] for r in g["rules"]]
    exprs = [r["expr"] for r in rules if r.get("alert") == alert]
    found = [float(x) for e in exprs for x in re.findall(rf"(?<![\w:]){re.escape(series)}\s*>\s*([0-9.]+)", e)]
    if len(found) != 1:
        raise ValueError(f"{path.name}: expected one '{series} > <number>' in alert {alert}, found {found}")
    return found[0]


#: Seed drift thresholds: those of the SeedDriftHigh / SeedDriftCritical alerts.
DRIFT_WARNING = alert_threshold("SeedDriftHigh", metric("seed_drift_ratio"))
DRIFT_CRITICAL = alert_threshold("SeedDriftCritical", metric("seed_drift_ratio"))


def sel(short: str, *extra: str, layer: bool = False, suffix: str = "") -> str:
    """Series selector for catalog metric ``short`` filtered by the run variables."""
    matchers = [RUN, *([LAYER] if layer else []), *extra]
    return f"{metric(short)}{suffix}{{{', '.join(matchers)}}}"


def _q(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False) -> prom.Dataquery:
    """One Prometheus query: a range query, or an instant one in table format (for tables)."""
    q = prom.Dataquery().expr(expr).ref_id(ref).datasource(DS).legend_format(legend or "__auto")
    return q.instant().format(pm.PromQueryFormat.TABLE) if instant else q.range()


def _ts(title: str, unit: str, queries: Sequence[prom.Dataquery], desc: str, *, w: int = 12,
        h: int = 8, lo: float | None = None, hi: float | None = None) -> timeseries.Panel:
    p = (timeseries.Panel().title(title).description(desc).datasource(DS).unit(unit).span(w).height(h)
         .targets(list(queries)).legend(cb.VizLegendOptions().show_legend(True)
                                         .display_mode(cm.LegendDisplayMode.LIST)
                                         .placement(cm.LegendPlacement.BOTTOM)))
    if lo is not None:
        p = p.min(lo)
    if hi is not None:
        p = p.max(hi)
    return p


def _stat(title: str, unit: str, query: prom.Dataquery, desc: str, *, w: int = 6, h: int = 4) -> stat.Panel:
    return stat.Panel().title(title).description(desc).datasource(DS).unit(unit).span(w).height(h).with_target(query)


def _thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=v, color=c) for v, c in steps])


def _variables() -> list[Any]:
    def query_var(name: str, label: str, query: str) -> db.QueryVariable:
        return (db.QueryVariable(name).label(label).datasource(DS).query(query)
                .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
                .multi(True).include_all(True).all_value(".*")
                .current(dm.VariableOption(text="All", value="$__all")))

    info = metric("run_info")
    return [
        db.DatasourceVariable("datasource").label("Datasource").type("prometheus")
        .current(dm.VariableOption(text="Prometheus", value=DATASOURCE_UID)),
        query_var("job", "Job", f"label_values({info}, job)"),
        query_var("sweep", "Sweep", f'label_values({info}{{job=~"$job"}}, sweep)'),
        query_var("run", "Run", f'label_values({info}{{job=~"$job", sweep=~"$sweep"}}, run_id)'),
        query_var("trial", "Trial", f'label_values({info}{{job=~"$job", sweep=~"$sweep", run_id=~"$run"}}, trial)'),
        query_var("layer", "Layer", f'label_values({metric("layer_units")}{{job=~"$job", run_id=~"$run"}}, layer)'),
    ]


def _base(uid: str, title: str, desc: str) -> db.Dashboard:
    links = db.DashboardLink("Plasticity").type(dm.DashboardLinkType.DASHBOARDS).tags(["plasticity"]) \
        .as_dropdown(True).include_vars(True).keep_time(True)
    return (db.Dashboard(title).uid(uid).description(desc).tags(["plasticity"]).timezone("browser")
            .time("now-1h", "now").refresh("30s").tooltip(dm.DashboardCursorSync.CROSSHAIR)
            .variables(_variables()).link(links))


def overview() -> db.Dashboard:
    """Runs table, loss/accuracy, throughput, heartbeat age and firing alerts."""
    acc, best = metric("val_accuracy_ratio"), metric("best_val_accuracy_ratio")
    alerts = f'ALERTS{{alertstate="firing", {RUN}}}'
    by_run = "max by (run_id)"
    runs = (table.Panel().title("Runs")
            .description("One row per run: identity, status, phase, progress, accuracy, heartbeat age.")
            .datasource(DS).unit("none").span(24).height(8)
            .targets([
                _q(f"max by (run_id, config_hash, experiment, device, sweep, trial) ({sel('run_info')})", ref="A",
                   instant=True),
                _q(f"max by (run_id, status) ({sel('run_status')} == 1)", ref="B", instant=True),
                _q(f"{by_run} ({sel('training_progress_ratio')})", ref="C", instant=True),
                _q(f"{by_run} ({sel('val_accuracy_ratio')})", ref="D", instant=True),
                _q(f"{by_run} ({sel('best_val_accuracy_ratio')})", ref="E", instant=True),
                _q(f"time() - {by_run} ({sel('last_step_timestamp_seconds')})", ref="F", instant=True),
                _q(f"max by (run_id, phase) ({sel('training_phase')} == 1)", ref="G", instant=True),
                _q(f"{by_run} ({sel('model_parameters')})", ref="H", instant=True),
            ])
            # Instant table frames share Time and run_id: merge joins them into one row per run.
            .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
            .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
                "excludeByName": {"Time": True, "Value #A": True, "Value #B": True, "Value #G": True},
                "renameByName": {"Value #C": "progress", "Value #D": "val accuracy", "Value #E": "best val accuracy",
                                 "Value #F": "since last step", "Value #H": "parameters"},
            }))
            .override_by_name("progress", [dm.DynamicConfigValue(id_val="unit", value="percentunit")])
            .override_by_name("val accuracy", [dm.DynamicConfigValue(id_val="unit", value="percentunit")])
            .override_by_name("best val accuracy", [dm.DynamicConfigValue(id_val="unit", value="percentunit")])
            .override_by_name("since last step", [dm.DynamicConfigValue(id_val="unit", value="s")])
            .override_by_name("parameters", [dm.DynamicConfigValue(id_val="unit", value="short")]))
    firing = (table.Panel().title("Firing alerts")
              .description("Alerts firing now for the selected runs (Prometheus ALERTS series).")
              .datasource(DS).unit("none").span(16).height(6)
              .with_target(_q(f"sum by (alertname, severity, run_id, sweep, trial) ({alerts})", instant=True))
              .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
                  "excludeByName": {"Time": True, "Value": True}})))
    rollbacks = (db.AnnotationQuery().name("Rollbacks").datasource(DS).enable(True).icon_color("orange")
                 .expr(f"changes({sel('rollbacks_total')}[$__rate_interval]) > 0"))
    return (_base(UIDS[0], "Plasticity / Overview", "Runs and sweep trials at a glance.")
            .annotation(rollbacks)
            .with_row(db.Row("Runs"))
            .with_panel(runs)
            .with_panel(_stat("Firing alerts (count)", "none", _q(f"count({alerts}) or vector(0)"),
                              "Number of alerts firing for the selected runs.", w=8, h=6)
                        .thresholds(_thresholds((None, "green"), (1, "red"))))
            .with_panel(firing)
            .with_row(db.Row("Training"))
            .with_panel(_ts("Loss", "none", [_q(sel("train_loss"), "train " + LEGEND_RUN, "A"),
                                             _q(sel("val_loss"), "val " + LEGEND_RUN, "B")],
                            "Mean training loss of the last epoch and validation loss."))
            .with_panel(_ts("Accuracy", "percentunit", [_q(sel("val_accuracy_ratio"), "val " + LEGEND_RUN, "A"),
                                                        _q(sel("best_val_accuracy_ratio"), "best " + LEGEND_RUN, "B")],
                            f"Validation accuracy ({acc}) and the best so far ({best}).", lo=0, hi=1))
            .with_panel(_ts("Samples per second", "suffix: samples/s", [_q(sel("samples_per_second"), LEGEND_RUN)],
                            "Training throughput of the last epoch.", w=8))
            .with_panel(_ts("Time since last step", "s",
                            [_q(f"time() - {sel('last_step_timestamp_seconds')}", LEGEND_RUN)],
                            "Age of the heartbeat: grows while a run is stalled (or after it ended).", w=8)
                        .thresholds(_thresholds((None, "green"), (300, "red"))))
            .with_panel(_ts("Epochs and steps per second", "suffix: /s",
                            [_q(f"rate({sel('epochs_total')}[$__rate_interval])", "epochs " + LEGEND_RUN, "A"),
                             _q(f"rate({sel('steps_total')}[$__rate_interval])", "steps " + LEGEND_RUN, "B")],
                            "Completion rate of epochs and optimisation steps.", w=8))
            .with_panel(_ts("Gradient norm", "none", [_q(sel("grad_norm"), LEGEND_RUN)],
                            "Mean L2 norm of the gradient over the last epoch's steps.", w=6))
            .with_panel(_ts("Learning rate", "none", [_q(sel("learning_rate"), LEGEND_RUN)],
                            "Current learning rate of the main optimizer.", w=6))
            .with_panel(_ts("Non-finite loss steps", "none", [_q(sel("nonfinite_loss_steps_total"), LEGEND_RUN)],
                            "Steps whose loss was NaN or infinite (any value above 0 means the run diverged).", w=6)
                        .thresholds(_thresholds((None, "green"), (1, "red"))))
            .with_panel(_ts("Progress", "percentunit", [_q(sel("training_progress_ratio"), LEGEND_RUN)],
                            "Epochs completed over epochs planned.", w=6, lo=0, hi=1))
            .with_row(db.Row("Divergence"))
            .with_panel(_ts("Loss over its baseline", "none",
                            [_q(sel("loss_baseline_ratio"), "ratio " + LEGEND_RUN, "A")],
                            "Each epoch's watched loss (mean train loss; neurogenesis: validation loss) over the "
                            "lower of the loss at initialisation and the best epoch so far; above the run's "
                            "explode_factor (default 5) it counts as an exploding evaluation.", w=8))
            .with_panel(_ts("Exploding evaluations vs patience", "none",
                            [_q(sel("loss_exploding_evaluations"), "exploding " + LEGEND_RUN, "A"),
                             _q(sel("loss_exploding_patience_evaluations"), "patience " + LEGEND_RUN, "B"),
                             _q(sel("loss_explosions_total"), "explosions " + LEGEND_RUN, "C")],
                            "Consecutive exploding evaluations; reaching the patience is an explosion "
                            "(counted: LossExploding pages on the count).", w=8))
            .with_panel(_ts("Rollbacks", "none", [_q(sel("rollbacks_total"), LEGEND_RUN)],
                            "Returns to the last good checkpoint after a non-finite loss (on_diverge rollback); "
                            "each is also an annotation.", w=8)))


def _state_code_expr() -> str:
    """One series per seed whose value is the index of its state in SEED_STATES.

    The one-hot ``seed_state`` is weighted by each state's index and reduced with
    max: the only non-zero term is the current state (dormant has index 0).
    """
    matchers = [(i, f'state="{s}"') for i, s in enumerate(SEED_STATES)]
    terms = [f"{sel('seed_state', m, layer=True)} * {i}" for i, m in matchers]
    return "max by (run_id, layer, seed) (" + " or ".join(terms) + ")"


def seeds() -> db.Dashboard:
    """Seed lifecycle: alpha, drift, state, health, loss, germination and plateau."""
    mapping = dm.ValueMap(options={str(i): dm.ValueMappingResult(text=s, color=STATE_COLORS[s], index=i)
                                   for i, s in enumerate(SEED_STATES)})
    germ = metric("germinations_total")
    annotation = (db.AnnotationQuery().name("Germinations").datasource(DS).enable(True).icon_color("green")
                  .expr(f"changes({sel('germinations_total')}[$__rate_interval]) > 0"))
    return (_base(UIDS[1], "Plasticity / Seeds", "Morphogenetic seeds: lifecycle, blending, drift, germination.")
            .annotation(annotation)
            .with_row(db.Row("Lifecycle"))
            .with_panel(statetimeline.Panel().title("Seed state").description(
                "Lifecycle state of every seed (from the one-hot seed_state metric).")
                .datasource(DS).unit("none").span(24).height(8).mappings([mapping])
                .with_target(_q(_state_code_expr(), LEGEND_SEED)))
            .with_panel(_ts("Seed alpha", "percentunit", [_q(sel("seed_alpha_ratio", layer=True), LEGEND_SEED)],
                            "Blending weight per seed: 0 dormant, 1 fully active.", lo=0, hi=1))
            .with_panel(_ts("Seed drift", "percentunit", [_q(sel("seed_drift_ratio", layer=True), LEGEND_SEED)],
                            f"Interface drift since blending began; warning at {DRIFT_WARNING}, "
                            f"critical at {DRIFT_CRITICAL}.",
                            lo=0)
                        .thresholds(_thresholds((None, "green"), (DRIFT_WARNING, "orange"), (DRIFT_CRITICAL, "red")))
                        .thresholds_style(cb.GraphThresholdsStyleConfig()
                                          .mode(cm.GraphThresholdsStyleMode.LINE_AND_AREA)))
            .with_panel(_ts("Seed health", "none", [_q(sel("seed_health", layer=True), LEGEND_SEED)],
                            "Activation variance at the seed's interface (low = unhealthy)."))
            .with_panel(_ts("Seed train loss", "none", [_q(sel("seed_train_loss", layer=True), LEGEND_SEED)],
                            "Reconstruction loss of each seed's child network."))
            .with_row(db.Row("Germination"))
            .with_panel(_ts("Germinations", "none",
                            [_q(f"increase({sel('germinations_total')}[$__rate_interval])", "new " + LEGEND_RUN, "A"),
                             _q(sel("germinations_total"), "total " + LEGEND_RUN, "B")],
                            f"Seeds germinated per interval and in total ({germ}).", w=8))
            .with_panel(_ts("Plateau vs patience", "suffix: epochs",
                            [_q(sel("plateau_epochs"), "plateau " + LEGEND_RUN, "A"),
                             _q(sel("plateau_patience_epochs"), "patience " + LEGEND_RUN, "B")],
                            "Germination triggers when the plateau reaches the patience.", w=8))
            .with_panel(_ts("Accuracy vs germination threshold", "percentunit",
                            [_q(sel("val_accuracy_ratio"), "accuracy " + LEGEND_RUN, "A"),
                             _q(sel("germination_accuracy_threshold_ratio"), "threshold " + LEGEND_RUN, "B")],
                            "Germination happens only while accuracy is below the threshold.", w=8, lo=0, hi=1))
            .with_panel(_ts("Seed transitions", "none",
                            [_q(f"sum by (run_id, to_state) "
                                f"(increase({sel('seed_transitions_total')}[$__rate_interval]))",
                                "{{run_id}} -> {{to_state}}")],
                            "Lifecycle transitions per interval by target state.", w=24)))


def seed_state_code(state: str) -> int:
    """Value the "Seed state" panel shows for ``state`` (its index in SEED_STATES)."""
    return SEED_STATES.index(state)


def system() -> db.Dashboard:
    """Epoch time quantiles, memory, sink errors and per-layer neuron signals."""
    bucket = sel("epoch_duration_seconds", suffix="_bucket")
    rate_b = f"sum by (le, run_id) (rate({bucket}[$__rate_interval]))"
    quantiles = [_q(f"histogram_quantile({q}, {rate_b})", f"p{int(float(q) * 100)} {{{{run_id}}}}", ref)
                 for q, ref in (("0.5", "A"), ("0.9", "B"), ("0.99", "C"))]
    ep_sum = sel("epoch_duration_seconds", suffix="_sum")
    used, limit = metric("device_memory_used_bytes"), metric("device_memory_limit_bytes")
    mem_ratio = (f"max by (run_id, device) ({sel('device_memory_used_bytes')}) / "
                 f"max by (run_id, device) ({sel('device_memory_limit_bytes')})")
    dead_ratio = (f"max by (run_id, layer) ({sel('layer_dead_units', layer=True)}) / "
                  f"max by (run_id, layer) ({sel('layer_units', layer=True)})")
    return (_base(UIDS[2], "Plasticity / System", "Timing, memory, telemetry health and neuron statistics.")
            .with_row(db.Row("Timing"))
            .with_panel(_ts("Epoch duration quantiles", "s", quantiles,
                            "Quantiles of the wall time per epoch, from the epoch-duration histogram."))
            .with_panel(_ts("Mean step time", "s",
                            [_q(f"sum by (run_id) (rate({ep_sum}[$__rate_interval])) / "
                                f"sum by (run_id) (rate({sel('steps_total')}[$__rate_interval]))", "{{run_id}}")],
                            "Epoch wall time per optimisation step, averaged over the interval."))
            .with_row(db.Row("Memory"))
            .with_panel(_ts("Device memory used vs limit (GPU or host)", "bytes",
                            [_q(sel("device_memory_used_bytes"), "used {{run_id}} {{device}}", "A"),
                             _q(sel("device_memory_limit_bytes"), "limit {{run_id}} {{device}}", "B")],
                            f"{used} against {limit}: CUDA allocated/total on GPU, process RSS/physical RAM on CPU."))
            .with_panel(_ts("Device memory ratio", "percentunit", [_q(mem_ratio, "{{run_id}} {{device}}")],
                            "Share of the device's memory in use.", lo=0, hi=1)
                        .thresholds(_thresholds((None, "green"), (0.9, "red")))
                        .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.LINE)))
            .with_panel(_ts("Sink errors", "none",
                            [_q(f"increase({sel('sink_errors_total')}[$__rate_interval])", "{{run_id}} {{sink}}")],
                            "Telemetry sink failures per interval (a failing sink is disabled).", w=24, h=6))
            .with_row(db.Row("Neurons"))
            .with_panel(_ts("Neuron activation quantiles", "none",
                            [_q(sel("neuron_activation_quantile", layer=True), "{{run_id}} {{layer}} q{{quantile}}")],
                            "Quantiles over each layer's units of mean |activation| on validation data."))
            .with_panel(_ts("Top activations", "none",
                            [_q(sel("neuron_activation_topk", layer=True), "{{run_id}} {{layer}} #{{rank}}")],
                            "Largest per-unit mean |activation| values of each layer by rank."))
            .with_panel(_ts("Dead units", "none", [_q(sel("layer_dead_units", layer=True), "{{run_id}} {{layer}}")],
                            "Units with zero activation on every validation sample."))
            .with_panel(_ts("Dead unit ratio", "percentunit", [_q(dead_ratio, "{{run_id}} {{layer}}")],
                            "Dead units over the layer's units.", lo=0, hi=1)))


def _plain(dashboard: db.Dashboard) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(dashboard.build(), cls=JSONEncoder))
    # Grafana wants panel ids unique per dashboard; number them in layout order.
    for i, panel in enumerate(data.get("panels", []), start=1):
        panel["id"] = i
    return data


def build_all() -> dict[str, dict[str, Any]]:
    """Every dashboard as plain JSON data, keyed by uid."""
    # The family dashboards build on this module's helpers, hence the late import.
    from monitoring.dashboards_apoptosis import apoptosis
    from monitoring.dashboards_families import lop, replay
    from monitoring.dashboards_heads import heads

    from monitoring.dashboards_structural import annotation_text, structural_row

    over = annotation_text(_plain(structural_row(overview())))
    apo, hd = annotation_text(_plain(apoptosis())), annotation_text(_plain(heads()))
    return {d["uid"]: d for d in (over, _plain(seeds()), _plain(system()), _plain(replay()), _plain(lop()), apo, hd)}


def render(data: Mapping[str, Any]) -> str:
    """Stable text form: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(out_dir: Path = DASHBOARD_DIR) -> list[Path]:
    """Write ``<uid>.json`` for every dashboard into ``out_dir``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for uid, data in build_all().items():
        path = out_dir / f"{uid}.json"
        path.write_text(render(data), encoding="utf-8")
        paths.append(path)
    return paths


def stale(out_dir: Path = DASHBOARD_DIR) -> list[str]:
    """Names of dashboard files in ``out_dir`` that differ from (or miss) the generated JSON."""
    bad = []
    for uid, data in build_all().items():
        path = out_dir / f"{uid}.json"
        if not path.is_file() or path.read_text(encoding="utf-8") != render(data):
            bad.append(path.name)
    return bad


def _panels(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in data.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows nest their panels
    return out


def panel_queries(dashboard_json: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(dashboard_uid, panel_title, expr)`` for every non-hidden query of every panel.

    Rows are skipped. Expressions still hold Grafana variables: pass them
    through :func:`substitute` before sending them to Prometheus.
    """
    uid = str(dashboard_json.get("uid", ""))
    return [(uid, str(p.get("title", "")), str(t["expr"]))
            for p in _panels(dashboard_json) if p.get("type") != "row"
            for t in p.get("targets", []) if t.get("expr") and not t.get("hide")]


def annotation_queries(dashboard_json: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(dashboard_uid, annotation_name, expr)`` for every Prometheus annotation query."""
    uid = str(dashboard_json.get("uid", ""))
    items = (dashboard_json.get("annotations") or {}).get("list", [])
    return [(uid, str(a.get("name", "")), str(a["expr"])) for a in items if a.get("expr")]


def variable_queries(dashboard_json: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(variable_name, query)`` for every query variable (``label_values(...)`` strings)."""
    items = (dashboard_json.get("templating") or {}).get("list", [])
    return [(str(v["name"]), str(v.get("query", ""))) for v in items if v.get("type") == "query"]


_VAR = re.compile(r"\$\{([A-Za-z_]\w*)(?::[\w]+)?\}|\[\[([A-Za-z_]\w*)\]\]|\$([A-Za-z_]\w*)")


def substitute(expr: str, values: Mapping[str, str] | None = None) -> str:
    """Replace Grafana variables in ``expr`` the way Grafana would before querying.

    Handles ``$name``, ``${name}``, ``${name:fmt}`` and ``[[name]]``, including
    Grafana's built-ins ``$__rate_interval``, ``$__interval`` and ``$__range``.
    ``values`` overrides :data:`DEFAULT_VALUES` (every run variable "All" =
    ``.*``, rate interval ``1m``). Values are inserted verbatim: they sit inside
    ``=~"..."`` matchers, so give regexes (``"a|b"`` for two runs, escaped
    literals otherwise), and durations for the interval built-ins. Raises
    ``KeyError`` for a variable with no value, so an unknown variable never
    reaches Prometheus as literal text. ``$1``-style regex backreferences are
    left alone (names start with a letter or underscore).
    """
    merged = {**DEFAULT_VALUES, **(values or {})}

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in merged:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return str(merged[name])

    return _VAR.sub(repl, expr)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the dashboards (or, with ``--check``, report stale files and exit 1)."""
    parser = argparse.ArgumentParser(prog="python -m monitoring.dashboards", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DASHBOARD_DIR, help="output directory [%(default)s]")
    parser.add_argument("--check", action="store_true", help="only compare with the files in --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.check:
        bad = stale(args.out)
        for name in bad:
            log.error("%s is out of date: run python -m monitoring.dashboards", name)
        return 1 if bad else 0
    for path in write(args.out):
        log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

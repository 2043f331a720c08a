"""Grafana dashboards of the experiment families (Grafana Foundation SDK, as code).

* ``plasticity-replay``: the ``neurogenesis`` family (Draelos et al. 2017):
  forgetting per class, per-level reconstruction error and outliers, neuron
  growth, intrinsic replay.
* ``plasticity-lop``: the ``plasticity`` family (loss of plasticity, continual
  backprop, ReDo): online accuracy per task, rank, dead and dormant units,
  replacements, weights and gradients, diagnostics cost.

They share the template variables, selectors and panel helpers of
:mod:`monitoring.dashboards`, which writes them with the others
(``python -m monitoring.dashboards``). Thresholds drawn on panels are read
from the alerting rules, so a dashboard and its alert cannot disagree.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm

from engine.telemetry.catalog import metric
from monitoring.dashboards import (
    ALERTS_YML,
    DS,
    FAMILY_DASHBOARDS,
    LEGEND_RUN,
    _base,
    _q,
    _stat,
    _thresholds,
    _ts,
    sel,
)

REPLAY_UID, LOP_UID = (next(u for u, f in FAMILY_DASHBOARDS.items() if f == family)
                       for family in ("neurogenesis", "plasticity"))
LEGEND_LAYER = "{{run_id}} {{layer}}"
LEGEND_CLASS = "{{run_id}} class {{class}}"
#: Grafana field override: draw the series of one query dashed (limits, baselines, thresholds).
DASHED = [dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})]


def alert_number(alert: str, pattern: str, path: Path = ALERTS_YML) -> float:
    """The number matched by regex ``pattern`` (one group) in alert ``alert``'s expression.

    Raises ``ValueError`` unless it matches exactly once, so a reworded rule
    fails at generation time instead of drawing a stale threshold.
    """
    rules = [r for g in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"] for r in g["rules"]]
    found = [float(x) for r in rules if r.get("alert") == alert for x in re.findall(pattern, r["expr"])]
    if len(found) != 1:
        raise ValueError(f"{path.name}: expected one match of {pattern!r} in alert {alert}, found {found}")
    return found[0]


def _after(series: str, op: str) -> str:
    return rf"(?<![\w:]){re.escape(series)}\s*{re.escape(op)}\s*([0-9.]+)"


#: Alert thresholds drawn on the panels.
FORGETTING_RATIO = alert_number(
    "NdlClassForgetting", _after("run_id_class:plasticity_ndl_class_reconstruction_error:ratio_baseline", ">"))
DEAD_RATIO = alert_number("LayerDeadUnitsHigh", _after(metric("layer_dead_ratio"), ">"))
DORMANT_RATIO = alert_number("LayerDormantUnitsHigh", _after(metric("layer_dormant_ratio"), ">"))
RANK_RATIO = alert_number("LayerRankCollapse", _after("run_id_layer:plasticity_layer_effective_rank:ratio_units", "<"))
#: The issue's goal for the share of wall time spent on probe diagnostics.
DIAGNOSTICS_SHARE_GOAL = 0.05


def _line(panel: timeseries.Panel) -> timeseries.Panel:
    return panel.thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.LINE))


def _heat(title: str, short: str, desc: str) -> heatmap.Panel:
    """Per-layer fraction (0-1) as a heatmap: one row per run and layer, colour = fraction."""
    return (heatmap.Panel().title(title).description(desc).datasource(DS).unit("percentunit").span(12).height(8)
            .with_target(_q(sel(short, layer=True), LEGEND_LAYER))
            # The series are the rows already: no bucketing by Grafana.
            .calculate(False)
            .color(heatmap.HeatmapColorOptions().mode(hm.HeatmapColorMode.SCHEME).scheme("Oranges")
                   .fill("dark-orange").scale(hm.HeatmapColorScale.LINEAR).exponent(0.5).steps(64).min(0).max(1))
            .cell_values(heatmap.CellValues().unit("percentunit").decimals(1))
            .y_axis(heatmap.YAxisConfig().unit("none").axis_placement(cm.AxisPlacement.LEFT))
            .show_value(cm.VisibilityMode.AUTO))


def replay() -> db.Dashboard:
    """Neurogenesis with intrinsic replay: forgetting, outliers, growth, replay."""
    err, base = sel("ndl_class_reconstruction_error"), sel("ndl_class_baseline_error")
    stage_class = dm.ValueMap(options={"-1": dm.ValueMappingResult(text="base", index=0)})
    return (_base(REPLAY_UID, "Plasticity / Neurogenesis replay",
                  "Neurogenesis deep learning: class-incremental autoencoder, neuron growth and intrinsic replay.")
            .with_row(db.Row("Stage"))
            .with_panel(_stat("Stage", "none", _q(f"max by (run_id) ({sel('ndl_stage')})", "{{run_id}}"),
                              "Index of the current class stage (0 = base training)."))
            .with_panel(_stat("Current class", "none", _q(f"max by (run_id) ({sel('ndl_current_class')})",
                                                         "{{run_id}}"),
                              "Label of the class being learned (base = base training).").mappings([stage_class]))
            .with_panel(_ts("Stage and class over time", "none",
                            [_q(sel("ndl_stage"), "stage " + LEGEND_RUN, "A"),
                             _q(sel("ndl_current_class"), "class " + LEGEND_RUN, "B")],
                            "Stage index and the class it learns (-1 during base training)."))
            .with_row(db.Row("Forgetting"))
            .with_panel(_ts("Class reconstruction error vs baseline", "none",
                            [_q(err, LEGEND_CLASS, "A"), _q(base, "baseline " + LEGEND_CLASS, "B")],
                            "Held-out reconstruction MSE of every class learned so far (solid) and the same "
                            "class's error right after it was learned (dashed).", lo=0)
                        .override_by_query("B", DASHED))
            .with_panel(_line(_ts("Forgetting ratio (error / baseline)", "suffix: x", [_q(f"{err} / {base}",
                                                                                          LEGEND_CLASS)],
                                  f"Each class's error over its baseline; NdlClassForgetting fires above "
                                  f"{FORGETTING_RATIO:g}x held for 30 minutes.", lo=0)
                              .thresholds(_thresholds((None, "green"), (FORGETTING_RATIO, "red")))))
            .with_row(db.Row("Growth"))
            .with_panel(_ts("Layer reconstruction error vs threshold", "none",
                            [_q(sel("ndl_layer_reconstruction_error", layer=True), LEGEND_LAYER, "A"),
                             _q(sel("ndl_layer_threshold", layer=True), "threshold " + LEGEND_LAYER, "B")],
                            "Mean reconstruction MSE through each level on the current class (solid) and the "
                            "level's outlier threshold from base-trained statistics (dashed).", lo=0)
                        .override_by_query("B", DASHED))
            .with_panel(_ts("Outlier fraction vs limit", "percentunit",
                            [_q(sel("ndl_outlier_fraction_ratio", layer=True), LEGEND_LAYER, "A"),
                             _q(sel("ndl_outlier_fraction_limit_ratio"), "limit " + LEGEND_RUN, "B")],
                            "Share of the current class's samples above each level's threshold; a level "
                            "grows while it is above the limit (dashed).", lo=0, hi=1)
                        .override_by_query("B", DASHED))
            .with_panel(_ts("Neurons per layer", "none", [_q(sel("layer_units", layer=True), LEGEND_LAYER)],
                            "Units of each encoder level (grows with neurogenesis).", w=8))
            .with_panel(_ts("Neurons added", "none",
                            [_q(f"increase({sel('ndl_neurons_added_total', layer=True)}[$__rate_interval])",
                                "new " + LEGEND_LAYER, "A"),
                             _q(sel("ndl_neurons_added_total", layer=True), "total " + LEGEND_LAYER, "B")],
                            "Neurons added per interval and in total, per level.", w=8))
            .with_panel(_ts("Stage growth vs cap", "none",
                            [_q(sel("ndl_stage_neurons_added", layer=True), LEGEND_LAYER, "A"),
                             _q(sel("ndl_stage_growth_limit", layer=True), "cap " + LEGEND_LAYER, "B")],
                            "Neurons added to each level in the current stage against the per-stage cap "
                            "(dashed); at the cap with outliers left, NdlRunawayGrowth fires.", w=8)
                        .override_by_query("B", DASHED))
            .with_row(db.Row("Replay"))
            .with_panel(_ts("Replay samples per second", "suffix: samples/s",
                            [_q(f"rate({sel('ndl_replay_samples_total')}[$__rate_interval])", LEGEND_RUN)],
                            "Samples of earlier classes generated by intrinsic replay (0 without replay).", w=8))
            .with_panel(_ts("Replay samples (total)", "short", [_q(sel("ndl_replay_samples_total"), LEGEND_RUN)],
                            "Replayed samples generated since the run started.", w=8))
            .with_panel(_ts("Reconstruction loss", "none",
                            [_q(sel("train_loss"), "train " + LEGEND_RUN, "A"),
                             _q(sel("val_loss"), "val " + LEGEND_RUN, "B")],
                            "Mean training loss of the last epoch (stage) and held-out loss.", w=8)))


def lop() -> db.Dashboard:
    """Loss of plasticity: online accuracy, rank, dead/dormant units, replacement, cost."""
    ratio = f"{sel('layer_effective_rank', layer=True)} / {sel('layer_units', layer=True)}"
    return (_base(LOP_UID, "Plasticity / Loss of plasticity",
                  "Task streams: online performance, rank and dormancy diagnostics, continual backprop and ReDo.")
            .with_row(db.Row("Online performance"))
            .with_panel(_stat("Current task", "none", _q(f"max by (run_id) ({sel('stream_task')})", "{{run_id}}"),
                              "Index of the current task of the stream.", h=8))
            .with_panel(_ts("Online accuracy per task", "percentunit",
                            [_q(sel("online_accuracy_ratio"), "online " + LEGEND_RUN, "A"),
                             _q(sel("val_accuracy_ratio"), "held-out " + LEGEND_RUN, "B")],
                            "Accuracy over each task's samples, each scored before the update on it, and on the "
                            "task's held-out samples. PlasticityLoss fires when the hourly mean of the online "
                            "accuracy falls 10 points below its best.", w=10, lo=0, hi=1))
            .with_panel(_ts("Online loss", "none", [_q(sel("online_loss"), LEGEND_RUN)],
                            "Mean online loss over the last task (the regression streams' main signal).", w=8))
            .with_row(db.Row("Rank"))
            .with_panel(_ts("Effective rank", "none", [_q(sel("layer_effective_rank", layer=True), LEGEND_LAYER)],
                            "exp(entropy of the normalised singular values) of each layer's probe activations.",
                            w=8, lo=0))
            .with_panel(_ts("Stable rank", "none", [_q(sel("layer_stable_rank", layer=True), LEGEND_LAYER)],
                            "sum s^2 / max s^2 of each layer's probe activations.", w=8, lo=0))
            .with_panel(_ts("Approximate rank", "none", [_q(sel("layer_approximate_rank", layer=True), LEGEND_LAYER)],
                            "Singular values holding 99% of the probe activations' energy.", w=8, lo=0))
            .with_panel(_line(_ts("Effective rank / width", "percentunit", [_q(ratio, LEGEND_LAYER)],
                                  f"Effective rank over the layer's units; LayerRankCollapse fires under "
                                  f"{RANK_RATIO:g} held for 30 minutes.", w=24, lo=0, hi=1)
                              .thresholds(_thresholds((None, "red"), (RANK_RATIO, "green")))))
            .with_row(db.Row("Dead and dormant units"))
            .with_panel(_heat("Dead unit fraction by layer", "layer_dead_ratio",
                              f"Share of each layer's units that are zero on every probe sample "
                              f"(LayerDeadUnitsHigh: over {DEAD_RATIO:g} for 30 minutes)."))
            .with_panel(_heat("Dormant unit fraction by layer", "layer_dormant_ratio",
                              f"Share of each layer's units whose ReDo score is at most tau "
                              f"(LayerDormantUnitsHigh: over {DORMANT_RATIO:g} for 30 minutes)."))
            .with_panel(_line(_ts("Dead fraction", "percentunit",
                                  [_q(sel("layer_dead_ratio", layer=True), LEGEND_LAYER)],
                                  "Dead units per layer with the alert threshold.", lo=0, hi=1)
                              .thresholds(_thresholds((None, "green"), (DEAD_RATIO, "red")))))
            .with_panel(_line(_ts("Dormant fraction", "percentunit",
                                  [_q(sel("layer_dormant_ratio", layer=True), LEGEND_LAYER)],
                                  "Dormant units per layer with the alert threshold.", lo=0, hi=1)
                              .thresholds(_thresholds((None, "green"), (DORMANT_RATIO, "red")))))
            .with_panel(_ts("Units replaced per interval", "none",
                            [_q(f"increase({sel('units_replaced_total', layer=True)}[$__rate_interval])",
                                LEGEND_LAYER)],
                            "Units re-initialised by continual backprop or ReDo per interval (0 for plain "
                            "backprop)."))
            .with_panel(_ts("Units replaced (total)", "short",
                            [_q(sel("units_replaced_total", layer=True), LEGEND_LAYER)],
                            "Units re-initialised since the run started, per layer."))
            .with_row(db.Row("Weights, gradients and cost"))
            .with_panel(_ts("Mean |w| per layer", "none", [_q(sel("layer_weight_abs_mean", layer=True), LEGEND_LAYER)],
                            "Mean absolute incoming weight (grows as plain backprop loses plasticity).", w=8, lo=0))
            .with_panel(_ts("Gradient norm per layer", "none", [_q(sel("layer_grad_norm", layer=True), LEGEND_LAYER)],
                            "L2 norm of each layer's weight gradient, averaged since the last diagnostics.",
                            w=8, lo=0))
            .with_panel(_line(_ts("Diagnostics time share", "percentunit",
                                  [_q(f"rate({sel('diagnostics_seconds_total')}[$__rate_interval])", LEGEND_RUN)],
                                  f"Share of wall time spent on probe diagnostics (goal: under "
                                  f"{DIAGNOSTICS_SHARE_GOAL:.0%}).", w=8, lo=0)
                              .thresholds(_thresholds((None, "green"), (DIAGNOSTICS_SHARE_GOAL, "orange"))))))

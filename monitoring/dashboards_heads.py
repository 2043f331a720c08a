"""Grafana dashboard of the ``heads`` family (Grafana Foundation SDK, as code).

``plasticity-heads``: a char-level decoder transformer (the apoptosis family's
model and language-model core) whose attention heads are scored (importance:
|dL/d gate| normalised per layer; attention entropy), then pruned or cloned
in decision rounds once a warm-up detector found the validation loss stable.
Rows: the language model (:func:`monitoring.dashboards_apoptosis.lm_row`), the
heads (alive, pruned and cloned per layer, decision rounds), their scores at
the last round (per layer and head), warm-up and quality (what the two heads
alerts compare, drawn against their limits), the perplexity jump and the
run's firing alerts. Settled structural changes, decision rounds and the
warm-up detection are annotations.

Per-head series are slots ``0 .. cap-1`` of a layer; a slot without a head
(pruned since) reads NaN, and the panels drop it (``>= 0`` is false for NaN).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm

from engine.telemetry.catalog import metric
from monitoring.dashboards import DS, FAMILY_DASHBOARDS, LEGEND_RUN, _base, _q, _stat, _thresholds, _ts, sel
from monitoring.dashboards_apoptosis import DASHED, LEGEND_LAYER, firing_alerts, jump_ratio_panel, jumps_panel, lm_row
from monitoring.dashboards_structural import annotation

HEADS_UID = next(uid for uid, family in FAMILY_DASHBOARDS.items() if family == "heads")
LEGEND_HEAD = "{{run_id}} {{layer}} h{{head}}"
#: Per-head values of the latest round, one bar or row per run, layer and head (NaN slots dropped).
_BY_HEAD = "max by (run_id, layer, head)"


def _per_head(short: str) -> str:
    return f"{_BY_HEAD} ({sel(short, layer=True)} >= 0)"


def _bars(title: str, short: str, unit: str, desc: str, *, hi: float | None = None) -> bargauge.Panel:
    """The latest value of every head, one horizontal bar each."""
    p = (bargauge.Panel().title(title).description(desc).datasource(DS).unit(unit).span(12).height(9)
         .with_target(_q(_per_head(short), LEGEND_HEAD))
         .orientation(cm.VizOrientation.HORIZONTAL).display_mode(cm.BarGaugeDisplayMode.GRADIENT)
         .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)).min(0).decimals(2))
    return p.max(hi) if hi is not None else p


def _marker(name: str, short: str, color: str) -> db.AnnotationQuery:
    """An annotation where counter or gauge ``short`` moved."""
    return (db.AnnotationQuery().name(name).datasource(DS).enable(True).icon_color(color)
            .expr(f"changes({sel(short)}[$__rate_interval]) > 0"))


def heads() -> db.Dashboard:
    """Heads: attention heads scored, pruned and cloned after warm-up, against the quality limit."""
    stable = dm.ValueMap(options={"0": dm.ValueMappingResult(text="warming up", color="orange", index=0),
                                  "1": dm.ValueMappingResult(text="stable", color="green", index=1)})
    not_yet = dm.ValueMap(options={"-1": dm.ValueMappingResult(text="not yet", color="text", index=0)})
    breaches = metric("heads_quality_breaches_total")
    importance_heat = (heatmap.Panel().title("Head importance over rounds")
                       .description("Each head's importance at every decision round so far (one row per layer "
                                    "and head slot; gaps: heads pruned since).")
                       .datasource(DS).unit("none").span(24).height(9)
                       .with_target(_q(_per_head("head_importance_ratio"), LEGEND_HEAD))
                       .calculate(False)  # the series are the rows already
                       .color(heatmap.HeatmapColorOptions().mode(hm.HeatmapColorMode.SCHEME).scheme("Blues")
                              .scale(hm.HeatmapColorScale.LINEAR).steps(64).min(0).max(1))
                       .cell_values(heatmap.CellValues().unit("none").decimals(2))
                       .y_axis(heatmap.YAxisConfig().unit("none").axis_placement(cm.AxisPlacement.LEFT))
                       .show_value(cm.VisibilityMode.AUTO))
    dash = lm_row(_base(HEADS_UID, "Plasticity / Heads",
                        "Char-level transformer whose attention heads are scored, then pruned or cloned after "
                        "warm-up, within a quality limit.")
                  .annotation(annotation())
                  .annotation(_marker("Decision rounds", "heads_decision_rounds_total", "blue"))
                  .annotation(_marker("Warm-up stable", "heads_warmup_stable", "green")))
    return (dash
            .with_row(db.Row("Heads"))
            .with_panel(_ts("Heads alive per layer", "none", [_q(sel("heads_alive", layer=True), LEGEND_LAYER)],
                            "Attention heads in each layer (blocks.i.attn).", w=8, lo=0))
            .with_panel(_ts("Heads pruned and cloned per layer", "short",
                            [_q(sel("heads_pruned_total", layer=True), "pruned " + LEGEND_LAYER, "A"),
                             _q(sel("heads_cloned_total", layer=True), "cloned " + LEGEND_LAYER, "B")],
                            "Heads removed by pruning rounds and added by cloning (Net2Net) so far, per layer "
                            "(a rolled-back round changes neither).", w=8, lo=0))
            .with_panel(_ts("Decision rounds", "short", [_q(sel("heads_decision_rounds_total"), LEGEND_RUN)],
                            "Decision rounds run so far (each scores every head, then prunes or clones); each "
                            "is also an annotation.", w=8, lo=0))
            .with_row(db.Row("Head scores (last decision round)"))
            .with_panel(_bars("Head importance", "head_importance_ratio", "none",
                              "|dL/d gate| of each head on fixed training windows, L2-normalised over its layer's "
                              "heads (Michel et al. 2019): pruning removes the lowest.", hi=1))
            .with_panel(_bars("Head attention entropy", "head_attention_entropy_nats", "suffix: nats",
                              "Mean entropy of each head's attention distributions (low: the head attends to a "
                              "few positions; at most ln(context length))."))
            .with_panel(importance_heat)
            .with_row(db.Row("Warm-up and quality"))
            .with_panel(_stat("Warm-up", "none", _q(f"max by (run_id) ({sel('heads_warmup_stable')})", "{{run_id}}"),
                              "Whether the warm-up detector has found the validation loss stable: no decision "
                              "before it (HeadsWarmupNotStable warns at half the run without).", w=4, h=8)
                        .mappings([stable]))
            .with_panel(_stat("Stable since step", "none",
                              _q(f"max by (run_id) ({sel('heads_stable_step')})", "{{run_id}}"),
                              "Training step at which warm-up stabilisation was detected.", w=4, h=8)
                        .mappings([not_yet]))
            .with_panel(_ts("Quality ratio vs limit", "none",
                            [_q(sel("heads_quality_ratio"), "ratio " + LEGEND_RUN, "A"),
                             _q(sel("heads_quality_limit_ratio"), "limit " + LEGEND_RUN, "B")],
                            "Validation loss after the last decision round over the unpruned model's; a round "
                            "above the limit (dashed) is a breach and stops pruning (rolled back by default: "
                            "the ratio is then the restored model's). Kept above it: HeadsPrunedPastQuality.",
                            w=8)
                        .override_by_query("B", DASHED))
            .with_panel(_ts("Quality breaches", "short", [_q(sel("heads_quality_breaches_total"), LEGEND_RUN)],
                            f"Decision rounds that crossed the quality limit, rolled back or not ({breaches}).",
                            w=8, lo=0)
                        .thresholds(_thresholds((None, "green"), (1, "red")))
                        .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.LINE)))
            .with_panel(jump_ratio_panel(w=12))
            .with_panel(jumps_panel(w=12))
            .with_panel(firing_alerts("HeadsPrunedPastQuality, HeadsWarmupNotStable, PerplexityJumpAfterChange, "
                                      "StructuralChangesHurting, ...")))

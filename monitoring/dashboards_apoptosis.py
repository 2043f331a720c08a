"""Grafana dashboard of the ``apoptosis`` family (Grafana Foundation SDK, as code).

``plasticity-apoptosis``: a char-level decoder transformer whose FFN hidden
units (layer ``blocks.i.mlp``) and attention value channels (``blocks.i.attn``)
die, regrow and grow while it trains (phase ``train``, then ``shift`` for a
domain-shift stream). Rows: the language model (loss, perplexity, tokens/s,
text samples), the units (alive, born and died, fading, lineage depth), their
statistics (utility and age quantiles), and the two family alerts' signals
drawn against their per-run limits (what ``ApoptosisDeathStorm`` and
``PerplexityJumpAfterChange`` compare), with the run's firing alerts. Settled
structural changes are annotations (:mod:`monitoring.dashboards_structural`).

The language-model panels read metrics any char-level family exports, so a
later family on the same model (``heads``: :mod:`monitoring.dashboards_heads`)
reuses :func:`lm_row`, the perplexity-jump panels and the firing-alerts table.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from engine.telemetry.catalog import metric
from monitoring.dashboards import DS, FAMILY_DASHBOARDS, LEGEND_RUN, RUN, _base, _q, _stat, _ts, sel
from monitoring.dashboards_structural import annotation

APOPTOSIS_UID = next(uid for uid, family in FAMILY_DASHBOARDS.items() if family == "apoptosis")
LEGEND_LAYER = "{{run_id}} {{layer}}"
LEGEND_QUANTILE = "{{run_id}} {{layer}} q{{quantile}}"
#: Grafana field override: draw the series of one query dashed (limits).
DASHED = [dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})]
JUMPS = metric("perplexity_jumps_total")
#: Series kept when summing over layers (the dashboard's run identity).
_BY_RUN = "sum by (run_id, sweep, trial)"


def _rate(short: str, *, layer: bool = False) -> str:
    return f"rate({sel(short, layer=layer)}[$__rate_interval])"


def lm_row(dash: db.Dashboard) -> db.Dashboard:
    """Append the language-model row: loss, perplexity, throughput, phase and text samples."""
    phase = _stat("Phase", "none", _q(f"max by (run_id, phase) ({sel('training_phase')} == 1)", "{{phase}}"),
                  "Current training phase (train: corpus A; shift: the domain-shift stream; done).", w=4)
    return (dash.with_row(db.Row("Language model"))
            .with_panel(_ts("Loss", "none", [_q(sel("train_loss"), "train " + LEGEND_RUN, "A"),
                                             _q(sel("val_loss"), "val " + LEGEND_RUN, "B")],
                            "Mean training loss per character of the last evaluation interval and validation "
                            "loss (nats per character).", w=8))
            .with_panel(_ts("Validation perplexity", "none", [_q(sel("val_perplexity"), LEGEND_RUN)],
                            "exp(validation loss) after each evaluation.", w=8, lo=1))
            .with_panel(phase.text_mode(cm.BigValueTextMode.NAME))
            .with_panel(_stat("Text samples", "short", _q(f"max by (run_id) ({sel('text_samples_total')})",
                                                          "{{run_id}}"),
                              "Text samples generated so far (phase ends and after structural events; "
                              "TensorBoard Text tab, text_samples.jsonl).", w=4))
            .with_panel(_ts("Tokens per second", "suffix: tokens/s", [_q(sel("tokens_per_second"), LEGEND_RUN)],
                            "Training tokens per second over the last evaluation interval.", w=8)))


def jump_ratio_panel(w: int = 8) -> timeseries.Panel:
    """What PerplexityJumpAfterChange compares: the perplexity ratio around the latest structural event, its limit."""
    return (_ts("Perplexity jump ratio vs limit", "none",
                [_q(sel("perplexity_jump_ratio"), "ratio " + LEGEND_RUN, "A"),
                 _q(sel("perplexity_jump_limit_ratio"), "limit " + LEGEND_RUN, "B")],
                "Validation perplexity at the first evaluation after the latest structural event "
                "over the one just before it; above the limit (dashed, 0 = off) the event counts "
                "as a jump.", w=w)
            .override_by_query("B", DASHED))


def jumps_panel(w: int = 8) -> timeseries.Panel:
    """The perplexity jumps counted so far (PerplexityJumpAfterChange pages on the count)."""
    return _ts("Perplexity jumps", "short", [_q(sel("perplexity_jumps_total"), LEGEND_RUN)],
               f"Structural events followed by a perplexity jump ({JUMPS}); "
               "PerplexityJumpAfterChange pages from the first.", w=w)


def firing_alerts(examples: str) -> table.Panel:
    """Table of the alerts firing now for the selected runs (``examples``: the family's alerts, for the text)."""
    alerts = f'ALERTS{{alertstate="firing", {RUN}}}'
    return (table.Panel().title("Firing alerts")
            .description(f"Alerts firing now for the selected runs ({examples}).")
            .datasource(DS).unit("none").span(24).height(6)
            .with_target(_q(f"sum by (alertname, severity, run_id, sweep, trial) ({alerts})", instant=True))
            .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
                "excludeByName": {"Time": True, "Value": True}})))


def apoptosis() -> db.Dashboard:
    """Apoptosis: units dying, regrowing and growing in a char-level transformer."""
    deaths_per_step = (f"{_BY_RUN} ({_rate('apoptosis_units_died_total', layer=True)}) / "
                       f"{_BY_RUN} ({_rate('steps_total')})")
    firing = firing_alerts("ApoptosisDeathStorm, PerplexityJumpAfterChange, StructuralChangesHurting, ...")
    dash = lm_row(_base(APOPTOSIS_UID, "Plasticity / Apoptosis",
                        "Char-level transformer whose FFN units and attention value channels die, regrow "
                        "and grow.").annotation(annotation()))
    return (dash
            .with_row(db.Row("Units"))
            .with_panel(_ts("Units alive per layer", "none", [_q(sel("layer_units", layer=True), LEGEND_LAYER)],
                            "FFN hidden units (blocks.i.mlp) and attention value channels (blocks.i.attn) "
                            "alive in each layer.", w=12, lo=0))
            .with_panel(_ts("Births and deaths per layer", "suffix: units/s",
                            [_q(_rate("apoptosis_units_born_total", layer=True), "born " + LEGEND_LAYER, "A"),
                             _q(f"-{_rate('apoptosis_units_died_total', layer=True)}", "died " + LEGEND_LAYER,
                                "B")],
                            "Units born (regrowth or growth, above 0) and removed by apoptosis (below 0) "
                            "per second.", w=12))
            .with_panel(_ts("Fading units", "none",
                            [_q(sel("apoptosis_fading_units", layer=True), LEGEND_LAYER)],
                            "Units whose output is being ramped to zero before they are removed.", w=12, lo=0))
            .with_panel(_ts("Max generation", "none",
                            [_q(sel("apoptosis_max_generation", layer=True), LEGEND_LAYER)],
                            "Deepest lineage generation alive in each layer (0 = only original units).",
                            w=12, lo=0))
            .with_row(db.Row("Unit statistics"))
            .with_panel(_ts("Unit utility quantiles", "none",
                            [_q(sel("apoptosis_unit_utility_quantile", layer=True), LEGEND_QUANTILE)],
                            "Quantiles over each layer's alive units of their bias-corrected running "
                            "utility (low-utility units are the ones that die).", w=12))
            .with_panel(_ts("Unit age quantiles", "suffix: steps",
                            [_q(sel("apoptosis_unit_age_steps", layer=True), LEGEND_QUANTILE)],
                            "Quantiles over each layer's alive units of their age in training steps.",
                            w=12, lo=0))
            .with_row(db.Row("Alerts"))
            .with_panel(jump_ratio_panel())
            .with_panel(jumps_panel())
            .with_panel(_ts("Deaths per step vs storm limit", "none",
                            [_q(deaths_per_step, "deaths/step {{run_id}} {{sweep}} {{trial}}", "A"),
                             _q(sel("apoptosis_death_storm_limit"), "limit " + LEGEND_RUN, "B")],
                            "Units removed per training step, summed over layers; ApoptosisDeathStorm fires "
                            "when its one-minute mean is above the limit (dashed, 0 = off).", w=8, lo=0)
                        .override_by_query("B", DASHED))
            .with_panel(firing))

"""The "Structural changes" row of the overview dashboard, and its annotation.

Every family's structural changes (germinate, blend, fossilize, cull, seed
rollback, grow, replace, ...) are accounted by the engine: the quality figure
before and after each change. This row charts the harmful streak against the
run's limit (what ``StructuralChangesHurting`` compares), the quality change
caused by the latest change of each kind and layer, the distribution of those
changes per kind, and the changes themselves. Each settled change is also an
annotation whose text carries its before and after figures (from the labels of
``structural_impact_info``: Prometheus annotations can only show labels).
"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import dashboard as db

from engine.telemetry.catalog import metric
from monitoring.dashboards import DS, LEGEND_RUN, _q, _ts, sel

#: Labels that identify one settled change in the info series.
_INFO_BY = "run_id, kind, layer, quality_before, quality_after"
ANNOTATION_NAME = "Structural changes"
#: Legacy Prometheus annotation fields Grafana still reads; the SDK's builder has
#: no setter for them, so they are added to the plain JSON (see :func:`annotation_text`).
ANNOTATION_TEXT = {"titleFormat": "{{kind}} on {{layer}}",
                   "textFormat": "{{kind}} on {{layer}} ({{run_id}}): quality {{quality_before}} -> {{quality_after}}",
                   "tagKeys": "kind,layer"}


def annotation() -> db.AnnotationQuery:
    """A marker when a settled change's info series appears (the minute after it settled)."""
    info = sel("structural_impact_info", layer=True)
    expr = f"max by ({_INFO_BY}) ({info}) unless max by ({_INFO_BY}) ({info} offset 1m)"
    return db.AnnotationQuery().name(ANNOTATION_NAME).datasource(DS).enable(True).icon_color("purple").expr(expr)


def annotation_text(data: dict[str, Any]) -> dict[str, Any]:
    """Add the title/text/tag formats to the structural annotation of plain dashboard JSON."""
    for item in (data.get("annotations") or {}).get("list", []):
        if item.get("name") == ANNOTATION_NAME:
            item.update(ANNOTATION_TEXT)
    return data


def structural_row(dash: db.Dashboard) -> db.Dashboard:
    """Append the row to ``dash`` (the overview)."""
    streak_name = metric("structural_harmful_streak")
    return (dash.annotation(annotation())
            .with_row(db.Row("Structural changes"))
            .with_panel(_ts("Harmful streak vs limit", "none",
                            [_q(sel("structural_harmful_streak"), "streak " + LEGEND_RUN, "A"),
                             _q(sel("structural_harmful_streak_limit"), "limit " + LEGEND_RUN, "B")],
                            f"Structural changes that made the quality figure (val loss) worse by more than "
                            f"impact_tolerance since the last one that improved it ({streak_name}); "
                            "StructuralChangesHurting fires when it reaches the limit (impact_streak).", w=6))
            .with_panel(_ts("Net quality change in structural windows", "percentunit",
                            [_q(sel("structural_net_change_ratio"), "net " + LEGEND_RUN, "A"),
                             _q(sel("structural_net_change_limit_ratio"), "limit " + LEGEND_RUN, "B")],
                            "Sum of the quality figure's relative changes inside every settled change's window "
                            "(positive = worse); StructuralChangesHurting fires above the limit "
                            "(impact_net_limit): harm in steps each under the tolerance.", w=6))
            .with_panel(_ts("Quality change per structural change", "percentunit",
                            [_q(sel("structural_impact_last_change_ratio", layer=True),
                                "{{kind}} {{layer}} " + LEGEND_RUN, "A")],
                            "Relative change of the quality figure (val loss, positive = worse) from just "
                            "before the latest settled change of each kind and layer to the end of its settle "
                            "window. Annotations give each change's before and after.", w=6))
            .with_panel(_ts("Structural changes", "none",
                            [_q(f"sum by (run_id, sweep, trial, kind) "
                                f"(increase({sel('structural_changes_total', layer=True)}[$__rate_interval]))",
                                "{{kind}} " + LEGEND_RUN, "A"),
                             _q(f"sum by (run_id, sweep, trial, kind) "
                                f"(increase({sel('structural_harmful_total')}[$__rate_interval]))",
                                "harmful {{kind}} " + LEGEND_RUN, "B")],
                            "Structural changes per interval by kind, and those that turned out harmful.", w=6))
            .with_panel(_ts("Median quality change by kind", "percentunit",
                            [_q(f"histogram_quantile(0.5, sum by (run_id, sweep, trial, kind, le) "
                                f"({sel('structural_impact_change_ratio', suffix='_bucket')}))",
                                "{{kind}} " + LEGEND_RUN, "A")],
                            "Median relative quality change over all settled changes of each kind so far "
                            "(from the histogram; positive = worse).", w=24)))

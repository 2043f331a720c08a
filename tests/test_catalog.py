"""The metric catalog follows Prometheus naming rules and is the single source of names."""

from __future__ import annotations

import re
from pathlib import Path

from engine.telemetry.catalog import CATALOG, NEURON_QUANTILES, PREFIX, series_budget

ROOT = Path(__file__).resolve().parent.parent


def test_names_follow_prometheus_conventions() -> None:
    names = [m.name for m in CATALOG]
    assert len(names) == len(set(names)), "duplicate metric names"
    for m in CATALOG:
        assert re.fullmatch(rf"{PREFIX}_[a-z][a-z0-9_]*", m.name), m.name
        assert (m.kind == "counter") == m.name.endswith("_total"), m.name
        if m.unit:
            assert m.unit in ("seconds", "bytes", "ratio"), m.unit
            assert m.unit in m.name, f"{m.name} lacks its unit suffix {m.unit}"
        assert m.help and (m.help[0].isupper() or m.help[0].isdigit()), m.name
        assert not any(l in ("neuron", "unit", "index", "neuron_index") for l in m.labels), m.name


def test_labels_are_bounded() -> None:
    allowed = {"run_id", "seed", "layer", "state", "status", "phase", "quantile", "rank", "sink",
               "device", "experiment", "version", "python_version", "torch_version", "to_state", "class",
               "config_hash",  # config_hash: one value per run, like run_id
               "kind",  # one of STRUCTURAL_KINDS
               "head",  # attention-head slot 0 .. cap-1 of a layer: bounded by the run's config
               # quality figures of the latest settled change: the sink keeps one series per
               # kind and layer at a time (removes the previous), so they stay bounded too
               "quality_before", "quality_after"}
    for m in CATALOG:
        assert set(m.labels) <= allowed, (m.name, set(m.labels) - allowed)


def test_series_budget_is_bounded_by_structure_not_width() -> None:
    small = series_budget(n_seeds=4, n_layers=2, topk=3, n_sinks=4)
    assert small < 300  # ~100 of them for structural-change accounting (6 kinds of seed change)
    # Doubling seeds adds only per-seed series.
    from engine.telemetry.events import SEED_STATES

    assert series_budget(8, 2, 3, 4) - small == 4 * (len(SEED_STATES) + 4)


def test_series_budget_counts_only_the_family_metrics() -> None:
    seeds = series_budget(4, 2, 3, 4)
    # A family without seeds pays nothing for seed metrics, however many are asked for.
    assert series_budget(64, 3, 3, 4, "plasticity", n_phases=1) == series_budget(0, 3, 3, 4, "plasticity", n_phases=1)
    ndl = series_budget(0, 4, 3, 4, "neurogenesis", n_classes=10)
    # Per-class series grow with the classes (two per-class gauges), nothing else does.
    assert series_budget(0, 4, 3, 4, "neurogenesis", n_classes=20) - ndl == 2 * 10
    assert seeds != ndl


def test_series_budget_counts_quantile_metrics_per_layer_and_quantile() -> None:
    # apoptosis: activation, unit utility and unit age quantiles, each layers x quantiles.
    quantiled = [m for m in CATALOG if "quantile" in m.labels and m.applies_to("apoptosis")]
    assert len(quantiled) == 3
    per_layer = series_budget(0, 5, 3, 4, "apoptosis") - series_budget(0, 4, 3, 4, "apoptosis")
    # + 6 plain per-layer series, top-3 activations, 3 kinds x 3 per-kind-and-layer structural series
    assert per_layer == len(quantiled) * len(NEURON_QUANTILES) + 6 + 3 + 3 * 3


def test_series_budget_counts_head_slots_per_layer() -> None:
    """heads: per-head gauges cost layers x head cap each; the cap moves nothing else, nor other families."""
    per_head = [m for m in CATALOG if "head" in m.labels]
    assert {m.name for m in per_head} == {f"{PREFIX}_head_importance_ratio", f"{PREFIX}_head_attention_entropy_nats"}
    assert all(m.families == ("heads",) for m in per_head)
    four = series_budget(0, 2, 3, 4, "heads", n_phases=1, n_heads=4)
    assert series_budget(0, 2, 3, 4, "heads", n_phases=1, n_heads=8) - four == len(per_head) * 2 * 4
    assert series_budget(0, 2, 3, 4, "heads", n_phases=1, n_heads=0) == four - len(per_head) * 2 * 4
    # One more layer: 5 plain per-layer series (units, dead units, heads alive, pruned, cloned), its head
    # slots, top-3 activations, activation quantiles, 3 per-kind-and-layer structural series x 2 kinds.
    assert series_budget(0, 3, 3, 4, "heads", n_phases=1, n_heads=4) - four == (
        5 + len(per_head) * 4 + 3 + len(NEURON_QUANTILES) + 3 * 2)
    for family in ("seeds", "neurogenesis", "plasticity", "apoptosis"):
        assert series_budget(4, 2, 3, 4, family, n_heads=64) == series_budget(4, 2, 3, 4, family)


def test_every_family_metric_names_a_registered_family() -> None:
    from engine.registry import experiment_names

    names = set(experiment_names())
    for m in CATALOG:
        assert set(m.families) <= names, (m.name, m.families)


def test_readme_metric_table_matches_catalog() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(rf"^\| `({PREFIX}_[a-z0-9_]+)` \| (\w+) \| ([\w,]+) \| ([\w, ]+) \|", readme, re.M)
    assert {r[0] for r in rows} == {m.name for m in CATALOG}
    for name, kind, labels, families in rows:
        spec = next(m for m in CATALOG if m.name == name)
        assert (kind, labels) == (spec.kind, ",".join(spec.labels)), name
        assert families == (", ".join(spec.families) or "all"), name

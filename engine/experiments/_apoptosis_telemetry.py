"""Catalog samples of the ``apoptosis`` family: per-group unit counts, quantiles and the storm limit."""

from __future__ import annotations

from engine.mechanisms.apoptosis import Apoptosis
from engine.telemetry.catalog import NEURON_QUANTILES
from engine.telemetry.events import Sample


def group_samples(mech: Apoptosis) -> list[Sample]:
    """Births and deaths (cumulative), fading units, utility and age quantiles, deepest generation per group."""
    out: list[Sample] = []
    for group, s in mech.summaries().items():
        out += [Sample("apoptosis_units_born_total", (group,), float(s["born"])),
                Sample("apoptosis_units_died_total", (group,), float(s["died"])),
                Sample("apoptosis_fading_units", (group,), float(s["fading"])),
                Sample("apoptosis_max_generation", (group,), float(s["max_generation"]))]
        for q, u, a in zip(NEURON_QUANTILES, s["utility_quantiles"], s["age_quantiles"]):
            out += [Sample("apoptosis_unit_utility_quantile", (group, q), float(u)),
                    Sample("apoptosis_unit_age_steps", (group, q), float(a))]
    return out


def storm_limit(mech: Apoptosis, factor: float, steps_per_minute: float) -> float:
    """Deaths per step (all groups, averaged over one minute) that no healthy schedule reaches.

    One death round removes at most ``D = sum_g prune_rate x rate_g x units_g``
    units every ``prune_interval`` (I) steps. A one-minute window of S steps
    holds at most ``ceil(S / I)`` rounds, so healthy deaths per step stay below
    ``2 D / min(I, S)``; the limit is ``factor`` times that, with S measured (the family passes the last interval's steps per minute;
    before any measurement S = 1: a whole round in one step). Strategies that
    never remove units (growth_only, none) and ``factor`` 0 give 0: off.
    """
    cfg = mech.cfg
    if factor <= 0 or cfg.apoptosis_strategy in ("growth_only", "none"):
        return 0.0
    units = {g: s["units"] for g, s in mech.summaries().items()}
    per_round = sum(cfg.prune_rate * rate * units[g] for g, rate in mech.rates().items())
    if per_round <= 0:
        return 0.0
    return factor * 2 * per_round / max(min(cfg.prune_interval, steps_per_minute), 1.0)

"""Apoptosis strategies: what dies, what is born, and when (registered by name).

Each strategy turns the mechanism's state at one step into plans; on most
steps it returns ``[]`` after a modulo check. Rates are per selected group:
the strategy's base rate times the group's pattern multiplier.

* ``standard``: every ``prune_interval`` steps from ``apoptosis_start``, remove
  ``round(prune_rate x mult x #mature)`` lowest-utility mature units, then
  clone ``round(regrow_fraction x deaths)`` children of the highest-utility units.
* ``functional``: as standard, but the candidates are the ``2 x deaths``
  lowest-utility mature units; the ``protect_fraction`` of them whose ablation
  changes the probe output most (KL) survive; of the rest the (at most
  ``deaths``) with the smallest effect die.
* ``fade``: the doomed units' gains ramp linearly to 0 over ``fade_steps``
  (``g0 (1 - t/F)`` at the t-th step of the fade, t = 1..F); one step after
  reaching 0 they are removed (output already 0: no loss jump) and regrown.
* ``growth_only``: every ``growth_interval`` steps add ``round(growth_rate x
  mult x units)`` children, up to ``max_unit_factor`` x the initial size.
* ``hybrid``: every ``prune_interval`` steps the lowest-utility mature units
  start fading while as many children of the best units are born, so the
  count of units not fading stays constant; faded units are removed.
* ``none``: never acts.

Every strategy keeps a group at >= ``max(1, ceil(min_unit_fraction x n0))``
units not fading, at most ``max_unit_factor x n0`` units in all, and every
attention head at >= 1 channel not fading.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from engine.errors import ConfigError
from engine.mechanisms.apoptosis_probe import ablation_effects
from engine.mechanisms.apoptosis_units import UnitGroup
from engine.mechanisms.plans import Plan

if TYPE_CHECKING:
    from engine.mechanisms.apoptosis import Apoptosis

Probe = Callable[[], Any]


class Strategy:
    """Base class: :meth:`plans` returns the plans of one step (default: none)."""

    name: ClassVar[str] = ""

    def plans(self, mech: Apoptosis, step: int, probe: Probe | None) -> list[Plan]:
        """Plans for ``step`` (the mechanism's mirror is already updated for them)."""
        return []


_STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator registering ``cls`` under ``cls.name``."""
    if cls.name in _STRATEGIES and _STRATEGIES[cls.name] is not cls:
        raise RuntimeError(f"apoptosis strategy {cls.name!r} registered twice")
    _STRATEGIES[cls.name] = cls
    return cls


def strategy_names() -> list[str]:
    """Registered strategy names, sorted."""
    return sorted(_STRATEGIES)


def get_strategy(name: str) -> type[Strategy]:
    """The strategy class registered as ``name``; an unknown name lists the valid ones."""
    try:
        return _STRATEGIES[name]
    except KeyError:
        raise ConfigError("apoptosis_strategy", name, "allowed: " + ", ".join(strategy_names())) from None


# ----------------------------------------------------------------- shared steps

def due(step: int, start: int, interval: int) -> bool:
    """Whether ``step`` is an action step: ``start``, ``start + interval``, ..."""
    return step >= start and (step - start) % interval == 0


def capacity(mech: Apoptosis, g: UnitGroup) -> int:
    """Most units (alive plus fading) the group may hold."""
    return max(g.n0, math.floor(mech.cfg.max_unit_factor * g.n0 + 1e-9))


def doomed(mech: Apoptosis, g: UnitGroup, mult: float, step: int, factor: int = 1) -> tuple[list[int], int]:
    """(``factor`` x deaths lowest-utility mature positions, deaths) for one death round of ``g``."""
    cfg = mech.cfg
    mature = g.mature(step, cfg.maturity_steps)
    floor = max(1, math.ceil(cfg.min_unit_fraction * g.n0 - 1e-9))
    k = min(round(cfg.prune_rate * mult * len(mature)), len(g.alive()) - floor)
    return (g.lowest(mature, factor * k), k) if k > 0 else ([], 0)


def kill(mech: Apoptosis, g: UnitGroup, positions: list[int], step: int, cause: str, reason: str) -> list[Plan]:
    """Remove ``positions`` (one ``apoptosis`` record)."""
    if not positions:
        return []
    ids = [g.ids[p] for p in positions]
    plan = g.prune(positions, step, cause)
    mech.record("apoptosis", g.name, len(ids), step, reason, ids)
    return [plan]


def births(mech: Apoptosis, g: UnitGroup, count: int, step: int, kind: str, reason: str) -> list[Plan]:
    """Clone ``count`` children of the highest-utility units (capped by capacity; one record)."""
    count = min(count, capacity(mech, g) - len(g))
    parents = g.best(count)
    if not parents:
        return []
    plan = g.clone(parents, step, mech.cfg.mutation_noise)
    mech.record(kind, g.name, len(parents), step, reason, g.ids[-len(parents):])
    return [plan]


def regrow(mech: Apoptosis, g: UnitGroup, deaths: int, step: int) -> list[Plan]:
    """Replacement births after ``deaths`` deaths (``regrow_fraction`` per death)."""
    n = round(mech.cfg.regrow_fraction * deaths)
    return births(mech, g, n, step, "regrow", f"replacing {deaths} dead units with mutated copies of the "
                  f"highest-utility units (noise {mech.cfg.mutation_noise:g})")


def _lowest_reason(g: UnitGroup, positions: list[int], what: str) -> str:
    util = g.utility().cpu()
    top = float(util[positions].max())
    return f"{what} (utility <= {top:.3g}; group median {float(util[g.alive()].median()):.3g})"


def fade_values(g: UnitGroup, positions: list[int], step: int, steps: int) -> list[float]:
    """Gains of fading ``positions`` at ``step``: ``g0 * max(0, 1 - (step - start + 1) / steps)``."""
    return [g.fade_from[p] * max(0.0, 1.0 - (step - g.fade_start[p] + 1) / steps) for p in positions]


def advance_fades(mech: Apoptosis, step: int, regrow_dead: bool) -> list[Plan]:
    """Remove units whose fade ended (optionally regrowing them) and step the other ramps."""
    steps, out = mech.cfg.fade_steps, []
    for g in mech.groups.values():
        if not any(f >= 0 for f in g.fade_start):
            continue
        done = [p for p in g.fading() if step - g.fade_start[p] >= steps]
        out += kill(mech, g, done, step, "faded", f"gain ramped to 0 over {steps} steps")
        if done and regrow_dead:
            out += regrow(mech, g, len(done), step)
        ramp = g.fading()
        if ramp:
            out.append(g.fade_to(ramp, fade_values(g, ramp, step, steps)))
    return out


def begin_fade(mech: Apoptosis, g: UnitGroup, positions: list[int], step: int) -> list[Plan]:
    """Start fading ``positions`` (first ramp value now)."""
    positions = sorted(positions)
    g.start_fade(positions, step)
    return [g.fade_to(positions, fade_values(g, positions, step, mech.cfg.fade_steps))]


# ----------------------------------------------------------------- strategies

@register_strategy
class NoApoptosis(Strategy):
    """The baseline: never acts."""

    name = "none"


@register_strategy
class Standard(Strategy):
    """Prune the lowest-utility mature units, regrow mutated copies of the best."""

    name = "standard"

    def plans(self, mech: Apoptosis, step: int, probe: Probe | None) -> list[Plan]:
        """Deaths and replacement births every ``prune_interval`` steps."""
        cfg, out = mech.cfg, []
        if not due(step, cfg.apoptosis_start, cfg.prune_interval):
            return out
        for g, mult in mech.selected():
            dead, _ = doomed(mech, g, mult, step)
            if dead:
                reason = _lowest_reason(g, dead, f"{len(dead)} lowest-utility mature units")
                out += kill(mech, g, dead, step, "apoptosis", reason)
                out += regrow(mech, g, len(dead), step)
        return out


@register_strategy
class Functional(Strategy):
    """Standard, but candidates whose ablation changes the probe output most are protected."""

    name = "functional"

    def plans(self, mech: Apoptosis, step: int, probe: Probe | None) -> list[Plan]:
        """Deaths among unprotected candidates and replacement births every ``prune_interval`` steps."""
        cfg, out = mech.cfg, []
        if not due(step, cfg.apoptosis_start, cfg.prune_interval):
            return out
        rounds = [(g, *doomed(mech, g, mult, step, factor=2)) for g, mult in mech.selected()]
        units = [(g.layer, p) for g, cand, _ in rounds for p in cand]
        if not units:
            return out
        effects = ablation_effects(mech.model, mech.probe_ids(probe), units).tolist()
        at = 0
        for g, cand, k in rounds:
            eff, at = effects[at:at + len(cand)], at + len(cand)
            order = sorted(range(len(cand)), key=lambda i: (eff[i], cand[i]))  # smallest effect first
            n_protect = round(cfg.protect_fraction * len(cand))
            dead = sorted(cand[i] for i in order[:min(k, len(cand) - n_protect)])
            if not dead:
                continue
            kept = max((eff[i] for i in order[len(order) - n_protect:]), default=0.0)
            reason = _lowest_reason(g, dead, f"{len(dead)} lowest-utility mature units with the smallest "
                                    f"probe-ablation effect; {n_protect} of {len(cand)} candidates protected "
                                    f"(KL up to {kept:.3g})")
            out += kill(mech, g, dead, step, "apoptosis", reason)
            out += regrow(mech, g, len(dead), step)
        return out


@register_strategy
class Fade(Strategy):
    """Doomed units fade out over ``fade_steps``, then are removed and regrown."""

    name = "fade"

    def plans(self, mech: Apoptosis, step: int, probe: Probe | None) -> list[Plan]:
        """Ramp and removal plans every step while units fade; new fades every ``prune_interval``."""
        cfg = mech.cfg
        out = advance_fades(mech, step, regrow_dead=True)
        if not due(step, cfg.apoptosis_start, cfg.prune_interval):
            return out
        for g, mult in mech.selected():
            dead, _ = doomed(mech, g, mult, step)
            if not dead:
                continue
            if cfg.fade_steps == 0:
                out += kill(mech, g, dead, step, "apoptosis", _lowest_reason(g, dead, "lowest-utility mature units"))
                out += regrow(mech, g, len(dead), step)
            else:
                out += begin_fade(mech, g, dead, step)
        return out


@register_strategy
class GrowthOnly(Strategy):
    """Add children of the highest-utility units up to ``max_unit_factor``; no deaths."""

    name = "growth_only"

    def plans(self, mech: Apoptosis, step: int, probe: Probe | None) -> list[Plan]:
        """Growth births every ``growth_interval`` steps."""
        cfg, out = mech.cfg, []
        if not due(step, cfg.apoptosis_start, cfg.growth_interval):
            return out
        for g, mult in mech.selected():
            n = round(cfg.growth_rate * mult * len(g))
            out += births(mech, g, n, step, "grow", f"growth by {cfg.growth_rate * mult:.3g} of {len(g)} units "
                          f"toward {capacity(mech, g)}")
        return out


@register_strategy
class Hybrid(Strategy):
    """Constant size with turnover: the worst units fade out while children of the best are born."""

    name = "hybrid"

    def plans(self, mech: Apoptosis, step: int, probe: Probe | None) -> list[Plan]:
        """Fade starts plus as many births every ``prune_interval``; removals when fades end."""
        cfg = mech.cfg
        out = advance_fades(mech, step, regrow_dead=False)
        if not due(step, cfg.apoptosis_start, cfg.prune_interval):
            return out
        for g, mult in mech.selected():
            dead, _ = doomed(mech, g, mult, step)
            dead = dead[:max(0, capacity(mech, g) - len(g))] if cfg.fade_steps else dead
            if not dead:
                continue
            if cfg.fade_steps == 0:
                out += kill(mech, g, dead, step, "apoptosis",
                            _lowest_reason(g, dead, f"turnover: {len(dead)} lowest-utility mature units"))
            else:
                out += begin_fade(mech, g, dead, step)  # fading units are not alive: never parents
            out += births(mech, g, len(dead), step, "regrow", f"turnover: {len(dead)} children of the "
                          f"highest-utility units replace as many fading lowest-utility units")
        return out

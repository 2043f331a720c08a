"""Config section of the neuron-apoptosis mechanism (:mod:`engine.mechanisms.apoptosis`).

Every field becomes a CLI flag ``--<field>``. The defaults suit a 2000-step CPU
run of a 4-block, width-128 char transformer (FFN groups of 512 units): from
step 200 on, every 100 steps 2% of each FFN group's mature units die and as
many mutated copies of high-utility units are born (about 10 per group per
interval, 19 intervals: ~150 events), which leaves the loss close to the
no-apoptosis baseline (measured, val loss after 2000 steps on the plays: none
1.869, standard 1.863, functional 1.863, fade 1.866, hybrid with
ffn_and_attention 1.859, growth_only 1.847). ``functional`` forwards
``probe_batch`` sequences once per candidate (2 x deaths per group) each round:
about 18% extra run time with these defaults; the other strategies cost < 1%.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from engine.config import Section
from engine.mechanisms.apoptosis_patterns import PATTERNS, parse_layer_rates

#: Strategy names (each a class registered in :mod:`engine.mechanisms.apoptosis_strategies`).
STRATEGIES: tuple[str, ...] = ("standard", "functional", "fade", "growth_only", "hybrid", "none")


class ApoptosisConfig(Section):
    """Which units die, when, how they are replaced, and in which layers."""

    apoptosis_strategy: Literal[STRATEGIES] = Field(  # type: ignore[valid-type]
        "standard", description="Apoptosis strategy: standard (prune lowest-utility mature units, regrow "
        "mutated copies of high-utility ones), functional (standard, but protect candidates whose ablation "
        "changes the output most on a probe batch), fade (ramp doomed units' gain to 0 over fade_steps, then "
        "remove and regrow), growth_only (add copies up to max_unit_factor, no deaths), hybrid (constant size: "
        "the lowest-utility units fade out while as many children of the best are born) or none (baseline).")
    layer_pattern: Literal[PATTERNS] = Field(  # type: ignore[valid-type]
        "standard", description="Unit groups that act: standard (every FFN), deep_only, shallow_only, "
        "alternating (FFN of even blocks), middle_only, attention_only, attention_shallow, attention_deep, "
        "ffn_and_attention, shallow_ffn_deep_attention or graduated (every FFN, rate x (i+1)/L). For odd L "
        "the middle block is in both halves.")
    layer_rates: str = Field(
        "", description="Per-group rate multipliers replacing the pattern's, e.g. "
        "'blocks.0.mlp=0.5,blocks.3.attn=2' (0 switches a group off; names checked against the model).")
    prune_rate: float = Field(
        0.02, ge=0, le=1, description="Apoptosis: fraction of a group's mature units removed (standard, "
        "functional, fade) or turned over (hybrid) per prune_interval, times the group's multiplier.")
    prune_interval: int = Field(100, ge=1, le=10**9, description="Apoptosis: steps between death rounds.")
    apoptosis_start: int = Field(200, ge=0, le=10**9, description="First step at which apoptosis may act.")
    maturity_steps: int = Field(
        100, ge=0, le=10**9, description="Apoptosis: age in steps before a unit may die (or be faded out).")
    utility_decay: float = Field(
        0.99, gt=0, lt=1, description="Decay rate of the running utility average (bias-corrected).")
    regrow_fraction: float = Field(
        1.0, ge=0, le=10, description="Apoptosis (standard, functional, fade): births per death "
        "(mutated copies of the highest-utility units; capped at max_unit_factor).")
    mutation_noise: float = Field(
        0.1, ge=0, le=10, description="Apoptosis: a child's incoming weights are its parent's plus this x "
        "std(parent row) x N(0, 1); its outgoing weights start at 0.")
    min_unit_fraction: float = Field(
        0.5, ge=0, le=1, description="Apoptosis: a group never shrinks below this fraction of its initial "
        "size (and never below 1 unit; an attention head keeps >= 1 value channel).")
    growth_rate: float = Field(
        0.05, ge=0, le=10, description="Apoptosis growth_only: units added per growth_interval as a "
        "fraction of the group's current size (times the group's multiplier).")
    growth_interval: int = Field(100, ge=1, le=10**9, description="Apoptosis growth_only: steps between growth rounds.")
    max_unit_factor: float = Field(
        2.0, ge=1, le=100, description="Apoptosis: capacity of a group (alive plus fading units) relative to "
        "its initial size (growth_only, hybrid, and regrow_fraction > 1).")
    fade_steps: int = Field(
        20, ge=0, le=10**6, description="Apoptosis fade and hybrid: steps over which a doomed unit's gain "
        "ramps linearly to 0 before it is removed (0: removed at once).")
    protect_fraction: float = Field(
        0.5, ge=0, le=1, description="Apoptosis functional: share of the (2 x deaths) lowest-utility "
        "candidates protected because ablating them changes the probe output most.")
    probe_batch: int = Field(
        8, ge=1, le=4096, description="Apoptosis functional: sequences of the probe batch ablations are measured on.")

    @field_validator("layer_rates")
    @classmethod
    def _check_layer_rates(cls, value: str) -> str:
        parse_layer_rates(value)  # syntax only; group names need the model
        return value

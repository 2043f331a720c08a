"""Apoptosis strategies on a tiny real char transformer with a real AdamW: events, counts, state, lineage."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from _apoptosis import Run, check_lineage, config
from engine.errors import ConfigError, ParameterError
from engine.mechanisms.apoptosis_config import STRATEGIES
from engine.mechanisms.apoptosis_strategies import get_strategy, strategy_names
from engine.mechanisms.apoptosis_units import UnitGroup
from engine.models.char_transformer import CharTransformer
from engine.surgery import apply_plan

KINDS = {"standard": {"apoptosis", "regrow"}, "functional": {"apoptosis", "regrow"}, "fade": {"apoptosis", "regrow"},
         "growth_only": {"grow"}, "hybrid": {"apoptosis", "regrow"}, "none": set()}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_strategy_runs_and_follows_its_rules(strategy: str) -> None:
    run = Run(config(apoptosis_strategy=strategy, layer_pattern="ffn_and_attention"))
    cap = {n: math.floor(2.0 * c) for n, c in run.n0.items()}
    floor = {n: math.ceil(0.5 * c) for n, c in run.n0.items()}
    for _ in range(12):  # 120 steps: intervals at 20, 30, ..., 110
        run.train(10)
        counts, alive = run.model.unit_counts(), run.alive()
        for n in counts:
            assert floor[n] <= alive[n] and counts[n] <= cap[n], (n, alive[n], counts[n])
            if strategy in ("standard", "functional", "hybrid", "none"):
                assert alive[n] == run.n0[n]  # regrow_fraction 1 / turnover: constant size
            if strategy == "growth_only":
                assert alive[n] == counts[n] >= run.n0[n]
    assert all(math.isfinite(v) for v in run.losses)
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    check_lineage(run)
    assert {r.kind for r in run.records} == KINDS[strategy]
    per_step = Counter((r.group, r.kind, r.step) for r in run.records)
    assert max(per_step.values(), default=1) == 1  # at most one record per group, kind and step
    if strategy == "none":
        assert run.plans == [] and not run.mech.wants_activity(50)
        return
    assert len(run.records) >= 10
    assert {r.group for r in run.records} == set(run.n0)  # every group acted (ffn_and_attention)
    summaries = run.mech.summaries()
    assert sum(s["born"] for s in summaries.values()) == sum(r.units for r in run.records if r.kind != "apoptosis")
    assert sum(s["died"] for s in summaries.values()) == sum(r.units for r in run.records if r.kind == "apoptosis")
    assert max(s["max_generation"] for s in summaries.values()) >= 1
    if strategy == "growth_only":
        assert run.model.unit_counts() == cap  # reached capacity (1.2^9 > 2) and stopped there
    for r in run.records:
        assert r.units == len(r.unit_ids) > 0 and r.reason


def test_min_unit_fraction_is_a_floor() -> None:
    run = Run(config(apoptosis_strategy="standard", layer_pattern="ffn_and_attention", regrow_fraction=0.0,
                     prune_rate=0.5, min_unit_fraction=0.6))
    run.train(100)
    for n, c in run.model.unit_counts().items():
        assert c == math.ceil(0.6 * run.n0[n])  # shrank to the floor, not below
    check_lineage(run)
    assert {r.kind for r in run.records} == {"apoptosis"}


def test_units_die_only_when_mature_and_lowest() -> None:
    run = Run(config(apoptosis_strategy="standard", maturity_steps=25))
    run.train(60)
    lineage = {(r["group"], r["unit_id"]): r for r in run.mech.lineage()}
    deaths = [r for r in run.records if r.kind == "apoptosis"]
    assert deaths and {r.step for r in deaths} == {30, 40, 50}  # nothing mature (age >= 25) at step 20
    for r in deaths:
        for uid in r.unit_ids:
            assert r.step - lineage[(r.group, uid)]["birth_step"] >= 25
    check_lineage(run)


def test_utility_is_bias_corrected_and_tracks_activity_times_outgoing_weights() -> None:
    model = CharTransformer(11, 1, 2, 16, 8, generator=torch.Generator().manual_seed(0))
    g = UnitGroup(model, "blocks.0.mlp", "ffn", "blocks.0.mlp.fc", "blocks.0.mlp.proj", ("blocks.0.mlp.gain",), 0.9)
    act = torch.rand(64)
    out_mag = model.blocks[0].mlp.proj.weight.abs().sum(0)  # [64]
    assert torch.equal(g.utility(), torch.zeros(64))  # no update yet: 0, not NaN
    model.blocks[0].mlp.last_abs = act
    for _ in range(3):
        assert g.observe()
    assert torch.allclose(g.utility(), act * out_mag, rtol=1e-5)  # constant input: exactly it after correction
    assert torch.allclose(g.util, (1 - 0.9 ** 3) * act * out_mag, rtol=1e-5)  # the running average is biased
    model.blocks[0].mlp.last_abs = None
    assert not g.observe() and g.updates == 3


def test_attention_heads_keep_a_channel() -> None:
    model = CharTransformer(11, 1, 2, 16, 8, generator=torch.Generator().manual_seed(0))
    g = UnitGroup(model, "blocks.0.attn", "attn", "blocks.0.attn.v", "blocks.0.attn.o",
                  ("blocks.0.attn.gain", "blocks.0.attn.v_head", "blocks.0.attn.v_slot"), 0.99)
    util = torch.tensor([0.0] * 8 + [1.0] * 8)  # head 0 holds the 8 lowest
    chosen = g.lowest(list(range(16)), 12, util)
    assert len(chosen) == 12 and sorted(chosen)[:7] == list(range(7)) and 7 not in chosen
    assert len([p for p in chosen if p >= 8]) == 5


def test_strategy_registry_names_every_strategy() -> None:
    assert strategy_names() == sorted(STRATEGIES)
    assert get_strategy("hybrid").name == "hybrid"
    with pytest.raises(ConfigError, match=r"'apoptosis_strategy': 'apoptosis' .*fade, functional, growth_only"):
        get_strategy("apoptosis")


def test_plans_not_applied_are_detected() -> None:
    run = Run(config(apoptosis_strategy="standard"))
    run.train(20)
    run.model.set_recording(True)
    run.model(run.batch()[0])
    assert run.mech.step(20)  # plans returned but not applied
    with pytest.raises(RuntimeError, match="apply every plan"):
        run.mech.step(21)


def test_fault_drill_kills_the_most_useful_units() -> None:
    run = Run(config(apoptosis_strategy="standard", layer_pattern="ffn_and_attention", apoptosis_start=1000))
    run.train(15)
    util = {n: g.utility().tolist() for n, g in run.mech.groups.items()}
    ids = run.mech.alive_ids()
    plans = run.mech.drill(14, 0.5)
    for plan in plans:
        apply_plan(run.model, run.opt, plan, run.gen)
    recs = run.mech.records()
    assert {r.group for r in recs} == set(run.n0) and {r.kind for r in recs} == {"apoptosis"}
    for r in recs:
        dead = {ids[r.group].index(i) for i in r.unit_ids}
        top = sorted(range(len(util[r.group])), key=lambda p: -util[r.group][p])
        assert len(dead) == run.n0[r.group] // 2
        if r.group.endswith("mlp"):
            assert dead == set(top[: len(dead)])
        assert "fault drill" in r.reason
    check_lineage(run)  # heads kept a channel each
    run.train(5)  # the mechanism carries on
    with pytest.raises(ParameterError, match="'fraction'"):
        run.mech.drill(20, 1.0)

"""Gradual fade (no loss spike at removal) and hybrid turnover (constant alive count)."""

from __future__ import annotations

import torch

from _apoptosis import Run, check_lineage, config
from engine.mechanisms.plans import PruneUnits, SetUnitGain
from engine.surgery import apply_plan


def test_fade_removes_units_without_a_loss_jump() -> None:
    for strategy, spiky in (("fade", False), ("standard", True)):
        run = Run(config(apoptosis_strategy=strategy, layer_pattern="ffn_and_attention", fade_steps=4))
        x, y = run.batch()
        worst = 0.0
        removals = 0
        for step in range(80):
            run.model.set_recording(run.mech.wants_activity(step))
            loss = run.model.loss(*run.batch())
            run.opt.zero_grad()
            loss.backward()
            run.opt.step()
            plans = run.mech.step(step)
            with torch.no_grad():
                before = run.model.loss(x, y).item()
            for plan in plans:
                apply_plan(run.model, run.opt, plan, run.gen)
            if any(isinstance(p, PruneUnits) for p in plans):
                removals += 1
                with torch.no_grad():
                    worst = max(worst, abs(run.model.loss(x, y).item() - before))
            run.records += run.mech.records()
        assert removals >= 4
        if spiky:
            assert worst > 1e-4  # removing live units does move the loss: the check can fail
        else:
            assert worst < 1e-5, worst  # faded units output exactly 0 when removed


def test_fade_ramps_gain_linearly_then_removes() -> None:
    run = Run(config(apoptosis_strategy="fade", fade_steps=4))
    run.train(20)
    start = [p for s, p in run.plans if s == 20]
    assert start == []  # plans of step 20 not made yet
    run.train(1)  # step 20: the fades begin
    first = [p for s, p in run.plans if s == 20]
    assert first and all(isinstance(p, SetUnitGain) for p in first)
    doomed = {p.buffer: p.indices for p in first}
    assert all(v == 0.75 for p in first for v in p.values)
    for t, want in ((21, 0.5), (22, 0.25), (23, 0.0)):
        run.train(1)
        plans = [p for s, p in run.plans if s == t]
        assert {p.buffer: p.indices for p in plans} == doomed
        assert all(v == want for p in plans for v in p.values)
        for buf, idx in doomed.items():
            assert torch.equal(run.model.get_buffer(buf)[list(idx)], torch.full((len(idx),), want))
    assert run.alive() != {n: c for n, c in run.model.unit_counts().items()}  # fading units are not alive
    run.train(1)  # step 24: removed and regrown
    kinds = {type(p).__name__ for s, p in run.plans if s == 24}
    assert kinds == {"PruneUnits", "CloneUnits"}
    assert run.model.unit_counts() == run.n0 == run.alive()
    assert [r.kind for r in run.records] == ["apoptosis", "regrow"] * len(doomed)
    assert all(r.reason == "gain ramped to 0 over 4 steps" for r in run.records if r.kind == "apoptosis")
    check_lineage(run)


def test_hybrid_keeps_the_alive_count_constant() -> None:
    run = Run(config(apoptosis_strategy="hybrid", layer_pattern="ffn_and_attention", fade_steps=6))
    saw_fading = False
    for _ in range(90):
        run.train(1)
        summaries = run.mech.summaries()
        for name, s in summaries.items():
            assert s["alive"] == run.n0[name]  # births offset the units that started fading
            assert s["units"] == s["alive"] + s["fading"] <= 2 * run.n0[name]
            saw_fading |= s["fading"] > 0
    assert saw_fading
    births = [r for r in run.records if r.kind == "regrow"]
    deaths = [r for r in run.records if r.kind == "apoptosis"]
    assert births and deaths and {r.step for r in deaths} == {r.step + 6 for r in births if r.step + 6 < 90}
    check_lineage(run)

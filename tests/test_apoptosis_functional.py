"""Functional preservation: probe-batch ablation effects and protection of the units that matter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _apoptosis import Run, config
from engine.errors import ParameterError
from engine.mechanisms.apoptosis_probe import ablation_effects
from engine.mechanisms.plans import PruneUnits


def kl_with_gain_zero(model: torch.nn.Module, idx: torch.Tensor, group: str, unit: int) -> float:
    """Reference: KL(p_full || p with unit's gain set to 0), one forward at a time."""
    with torch.no_grad():
        base = F.log_softmax(model(idx), -1)
        gain = model.get_buffer(f"{group}.gain")
        old = float(gain[unit])
        gain[unit] = 0.0
        abl = F.log_softmax(model(idx), -1)
        gain[unit] = old
    return float((base.exp() * (base - abl)).sum(-1).mean())


def test_batched_ablation_equals_one_unit_at_a_time() -> None:
    run = Run(config(apoptosis_strategy="none"))
    run.train(30)
    run.model.train()
    run.model.set_recording(True)
    units = [("blocks.0.mlp.fc", 3), ("blocks.1.attn.v", 0), ("blocks.1.attn.v", 9), ("blocks.0.mlp.fc", 60),
             ("blocks.1.mlp.fc", 7)]
    got = ablation_effects(run.model, run.probe, units, max_rows=8)  # chunks of 2 candidates
    want = [kl_with_gain_zero(run.model, run.probe, path.rpartition(".")[0], j) for path, j in units]
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-3, atol=1e-9)
    assert (got > 0).all()
    assert run.model.training and all(m.record for m in (run.model.blocks[0].mlp, run.model.blocks[1].attn))
    assert all(not m._forward_hooks for m in run.model.modules())


def test_functional_protects_the_unit_whose_ablation_matters_most() -> None:
    cfg = config(apoptosis_strategy="functional", layer_pattern="standard", layer_rates="blocks.0.mlp=0",
                 prune_rate=2 / 64, protect_fraction=0.25, apoptosis_start=40, prune_interval=1000)
    run = Run(cfg)
    run.train(40)  # before the first action step
    group = run.mech.groups["blocks.1.mlp"]
    star = 17
    with torch.no_grad():  # unit 17 now dominates the output, yet it gets the lowest utility below
        run.model.blocks[1].mlp.proj.weight[:, star] *= 200.0
    util = torch.arange(1.0, 65.0)
    util[star] = 0.0
    group.util = util * (1 - 0.99 ** group.updates)  # bias-corrected: exactly ``util``
    run.model.set_recording(False)  # no new utility update at the action step
    cands = [star, 0, 1, 2]  # the 4 = 2 x 2 lowest-utility candidates
    effects = ablation_effects(run.model, run.probe, [("blocks.1.mlp.fc", p) for p in cands]).tolist()
    assert effects[0] == max(effects)
    ids = list(group.ids)
    plans = run.mech.step(40, lambda: (run.probe, run.probe))
    prunes = [p for p in plans if isinstance(p, PruneUnits)]
    assert [p.layer for p in prunes] == ["blocks.1.mlp.fc"]
    dead = set(prunes[0].indices)
    order = sorted(range(1, 4), key=lambda i: effects[i])
    assert dead == {cands[i] for i in order[:2]} and star not in dead  # protected: the top 25% (1 of 4)
    rec = [r for r in run.mech.records() if r.kind == "apoptosis"]
    assert set(rec[0].unit_ids) == {ids[p] for p in dead}
    assert "1 of 4 candidates protected" in rec[0].reason


def test_standard_would_have_killed_it() -> None:
    run = Run(config(apoptosis_strategy="standard", layer_rates="blocks.0.mlp=0", prune_rate=2 / 64,
                     apoptosis_start=40, prune_interval=1000))
    run.train(40)
    group = run.mech.groups["blocks.1.mlp"]
    util = torch.arange(1.0, 65.0)
    util[17] = 0.0
    group.util = util * (1 - 0.99 ** group.updates)
    run.model.set_recording(False)
    plans = run.mech.step(40)
    assert [p.indices for p in plans if isinstance(p, PruneUnits)] == [(0, 17)]


def test_functional_needs_a_probe() -> None:
    run = Run(config(apoptosis_strategy="functional"))
    run.train(20)
    with pytest.raises(ParameterError, match="'probe'"):
        run.mech.step(20)

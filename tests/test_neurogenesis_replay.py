"""Data-free intrinsic replay, per-class thresholds and growth events of the neurogenesis family.

Runs the experiment in process (the trainer's step/epoch calls, no sinks) on
small 8x8-digit configurations.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from engine.config import build_config
from engine.experiments._ndl_data import ClassRows, StoredDataAccessError
from engine.experiments.neurogenesis import NeurogenesisExperiment
from engine.mechanisms.neurogenesis import ThresholdStore
from engine.mechanisms.replay import transported_codes
from engine.telemetry.events import StructuralChange

SMALL = {"experiment": "neurogenesis", "hidden_sizes": "16,8", "base_epochs": 4, "class_order": "0,2,3",
         "plasticity_epochs": 2, "stability_epochs": 2, "units_per_step": 2, "growth_cap": 4,
         "eval_every": 0, "seed": 5}


def drive(flat: dict[str, Any], stop_after: int | None = None,
          exp: NeurogenesisExperiment | None = None, start: int = 0) -> tuple[NeurogenesisExperiment, list]:
    """Run epochs ``start``.. like the trainer; returns the experiment and (epoch, where, event) triples."""
    cfg = build_config(flat)
    exp = exp or NeurogenesisExperiment(cfg, torch.device("cpu"))
    schedule = [p for p, n in exp.phases() for _ in range(n)]
    out: list[tuple[int, str, Any]] = []
    step = 0
    for epoch in range(start, len(schedule) if stop_after is None else stop_after):
        for batch in exp.batches(epoch, schedule[epoch]):
            loss = exp.compute_loss(batch, step)
            out += [(epoch, "step", e) for e in exp.apply_update(batch, step, loss).events]
            step += 1
        report = exp.end_epoch(epoch, schedule[epoch])
        out += [(epoch, "epoch", e) for e in report.events]
        out.append((epoch, "metrics", report.metrics))
    return exp, out


@pytest.fixture(scope="module")
def default_run() -> tuple[NeurogenesisExperiment, list]:
    """One uninterrupted run of SMALL under the family defaults (data-free replay)."""
    return drive(SMALL)


def test_default_replay_never_reads_a_learned_class(default_run: tuple) -> None:
    exp, _ = default_run  # the guard raises on any read of a learned class's images
    assert exp.fam.stats_source == "replay" and exp.train.guard
    base = exp.fam.base_epochs
    for context, classes in exp.train.reads:
        epoch = int(context.split()[1])
        allowed = {1, 7} if epoch < base else {exp.order[epoch - base]}
        assert set(classes) <= allowed, (context, classes)
    assert exp.train.retired == {0, 1, 2, 3, 7}
    with pytest.raises(StoredDataAccessError, match=r"\[0, 1\]"):
        exp.train.rows([0, 1, 9])
    # Old classes' statistics still followed the network: fitted in the grown top code.
    assert all(len(exp.stats.mean[c]) == exp.model.sizes()[-1] for c in exp.stats.classes)


def test_stored_data_variant_rereads_old_classes() -> None:
    exp, _ = drive({**SMALL, "stats_source": "data"})
    assert not exp.train.guard
    late = [set(c) for ctx, c in exp.train.reads if int(ctx.split()[1]) == exp.fam.base_epochs + 2]
    assert {1, 7, 0, 2} <= set().union(*late)  # the reads log does see old-class reads


def test_guard_only_when_asked() -> None:
    x, y = torch.rand(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    rows = ClassRows(x, y, guard=True)
    assert torch.equal(rows.rows([1]), x[2:4])
    rows.retire([1])
    with pytest.raises(StoredDataAccessError):
        rows.rows([1, 2])
    assert torch.equal(rows.rows([2]), x[4:])
    open_rows = ClassRows(x, y, guard=False)
    open_rows.retire([1])
    assert torch.equal(open_rows.rows([1]), x[2:4])
    copy = ClassRows(x, y, guard=True)
    copy.load_state_dict(rows.state_dict())
    with pytest.raises(StoredDataAccessError):
        copy.rows([1])


def test_transport_keeps_codes_when_nothing_changed_and_appends_new_units() -> None:
    z, before = torch.randn(10, 3), torch.randn(10, 3)
    assert torch.equal(transported_codes(z, before, before.clone()), z)
    after = torch.cat([before + 0.5, torch.ones(10, 2)], 1)  # drifted by 0.5, two new top units
    moved = transported_codes(z, before, after)
    assert moved.shape == (10, 5)
    assert torch.allclose(moved[:, :3], z + 0.5) and torch.equal(moved[:, 3:], torch.ones(10, 2))
    with pytest.raises(ValueError, match="must be"):
        transported_codes(z, before, torch.randn(10, 2))


def test_stage_with_growth_returns_one_grow_event_per_level(default_run: tuple) -> None:
    exp, out = default_run
    grows = [(epoch, where, e) for epoch, where, e in out if isinstance(e, StructuralChange)]
    assert grows and all(where == "step" for _, where, _ in grows)  # growth happens during a stage's steps
    base = exp.fam.base_epochs
    for h in exp.history[1:]:  # per stage: the events match what growth.csv records
        epoch = base + h["stage"] - 1
        events = {e.layer: e for ep, _, e in grows if ep == epoch}
        expected = {f"encoder.{i}": n for i, n in enumerate(h["added"]) if n}
        assert {k: e.units for k, e in events.items()} == expected, h
        for e in events.values():
            assert e.kind == "grow" and e.epoch == epoch and e.subject == str(h["learned"]) and e.reason
    assert any(sum(h["added"]) for h in exp.history[1:])  # the configuration does grow
    metric = exp.quality_metric("incremental")
    reports = [m for _, where, m in out if where == "metrics"]
    assert all(metric in m for m in reports)
    errors = exp._class_errors()  # the figure is the base classes' mean held-out error, now
    assert metric == "base_class_error"
    assert reports[-1][metric] == pytest.approx((errors[1] + errors[7]) / 2, rel=1e-6)
    assert reports[-1][metric] != pytest.approx(reports[-1]["val_loss"], rel=1e-6)


def test_without_growth_no_events() -> None:
    _, out = drive({**SMALL, "neurogenesis": False})
    assert not [e for _, _, e in out if isinstance(e, StructuralChange)]


def test_per_class_thresholds_take_the_highest_learned_class() -> None:
    store = ThresholdStore("per_class")
    store.measure([torch.linspace(0, 1, 101)], 95.0)  # pooled base figures only, not Th_L
    assert not store.ready
    store.measure_class(1, [torch.linspace(0, 1, 101)], 50.0)
    store.measure_class(0, [torch.linspace(0, 2, 101)], 50.0)
    assert store.thresholds == pytest.approx([1.0])
    again = ThresholdStore()
    again.load_state_dict(store.state_dict())
    assert again.mode == "per_class" and again.per_class == store.per_class
    with pytest.raises(ValueError, match="allowed"):
        ThresholdStore("per_level")


def test_checkpoint_mid_run_continues_exactly(default_run: tuple) -> None:
    full, out_full = default_run
    cut = SMALL["base_epochs"] + 1  # after the first stage
    part, _ = drive(SMALL, stop_after=cut)
    state = part.state_dict()
    resumed = NeurogenesisExperiment(build_config(SMALL), torch.device("cpu"))
    resumed.load_state_dict(state)
    resumed.gen.set_state(state["generator"])
    resumed, out_res = drive(SMALL, exp=resumed, start=cut)
    assert resumed.train.retired == full.train.retired
    assert [m for _, w, m in out_res if w == "metrics"] == [m for e, w, m in out_full if w == "metrics" and e >= cut]

"""The plasticity family's step: the manual SGD path equals autograd + optimizer bit for bit,
replacements come out as aggregated StructuralChange events, and the quality metric exists."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.nn import functional as F

from engine.config import build_config
from engine.experiments._plasticity_step import ReplacementLedger, Stepper, plain_sgd
from engine.experiments.plasticity import PlasticityExperiment
from engine.mechanisms.plans import ReinitUnits
from engine.models.mlp import MLP
from engine.telemetry.events import MetricSamples, StructuralChange


def _reference_step(model: MLP, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                    classification: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The textbook loop: model(x), loss.backward(), optimizer.step()."""
    out = model(x)
    loss = F.cross_entropy(out, y) if classification else F.mse_loss(out, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    opt.step()
    return loss.detach(), grads


@pytest.mark.parametrize("classification", [True, False])
@pytest.mark.parametrize("batch", [1, 5])
def test_manual_sgd_step_equals_autograd_bit_for_bit(classification: bool, batch: int) -> None:
    out_dim = 4 if classification else 1
    ref = MLP(6, 12, 3, out_dim, "he_uniform", torch.Generator().manual_seed(0))
    fast = MLP(6, 12, 3, out_dim, "he_uniform", torch.Generator().manual_seed(0))
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.05)
    opt_fast = torch.optim.SGD(fast.parameters(), lr=0.05)
    stepper = Stepper(fast, opt_fast, classification)
    assert stepper.manual
    gen = torch.Generator().manual_seed(1)
    for step in range(40):
        x = torch.rand(batch, 6, generator=gen)
        y = (torch.randint(0, out_dim, (batch,), generator=gen) if classification
             else torch.randn(batch, 1, generator=gen))
        if step == 20:  # a rollback / lr drill scales the group: the manual path must follow
            for o in (opt_ref, opt_fast):
                o.param_groups[0]["lr"] *= 0.5
        loss_ref, grads = _reference_step(ref, opt_ref, x, y, classification)
        loss = stepper.loss(x, y)
        assert not loss.requires_grad  # no graph on the manual path
        _, hidden, norms = stepper.update(loss)
        assert torch.equal(loss, loss_ref), step
        assert all(torch.equal(n, torch.linalg.vector_norm(g)) for n, g in zip(norms, grads)), step
        assert all(torch.equal(p, q) for p, q in zip(fast.parameters(), ref.parameters())), step
        assert len(hidden) == 3 and hidden[0].shape == (batch, 12)
    assert not any(opt_fast.state.values())  # plain SGD keeps no state, on either path


def test_other_optimizers_take_the_autograd_path() -> None:
    model = MLP(6, 8, 2, 3)
    assert not plain_sgd(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    assert not plain_sgd(torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4))
    assert not plain_sgd(torch.optim.Adam(model.parameters(), lr=0.1))
    assert plain_sgd(torch.optim.SGD(model.parameters(), lr=0.1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    stepper = Stepper(model, opt, classification=True)
    loss = stepper.loss(torch.rand(2, 6), torch.tensor([0, 2]))
    assert loss.requires_grad and not stepper.manual
    stepper.update(loss)
    assert all("exp_avg" in opt.state[p] for p in model.parameters())


def test_ledger_sums_per_layer_and_flushes_once() -> None:
    ledger = ReplacementLedger("cbp")
    for layer, idx in (("layers.10", [1]), ("layers.2", [0, 3]), ("layers.2", [5]), ("layers.0", [7])):
        ledger.add(ReinitUnits(layer, "head", idx))
    events = ledger.flush(epoch=4)
    assert [(e.layer, e.units, e.kind, e.reason, e.epoch) for e in events] == [
        ("layers.0", 1, "replace", "cbp", 4), ("layers.2", 3, "replace", "cbp", 4),
        ("layers.10", 1, "replace", "cbp", 4)]
    assert ledger.flush(epoch=5) == []


def _experiment(mechanism: str, **extra: Any) -> PlasticityExperiment:
    flat = {"experiment": "plasticity", "mechanism": mechanism, "per_class": 12, "hidden_units": 10,
            "probe_size": 60, "diagnostics_every": 7, "maturity_threshold": 5, "replacement_rate": 0.02,
            "redo_every": 6, "redo_tau": 0.5, "redo_batch": 40, "seed": 2, **extra}
    return PlasticityExperiment(build_config(flat), torch.device("cpu"))


def _run_tasks(exp: PlasticityExperiment, tasks: int) -> list[tuple[int, int, list[Any]]]:
    """(epoch, step index within the task, events) of every step."""
    seen, step = [], 0
    for epoch in range(tasks):
        for i, batch in enumerate(exp.batches(epoch, "stream")):
            res = exp.apply_update(batch, step, exp.compute_loss(batch, step))
            seen.append((epoch, i, res.events))
            step += 1
        exp.end_epoch(epoch, "stream")
    return seen


@pytest.mark.parametrize("mechanism", ["cbp", "redo"])
def test_replacements_produce_aggregated_structural_changes(mechanism: str) -> None:
    exp = _experiment(mechanism)
    steps = _run_tasks(exp, 3)
    per_task = max(i for _, i, _ in steps) + 1
    changes = [(epoch, i, e) for epoch, i, events in steps for e in events if isinstance(e, StructuralChange)]
    assert sum(exp.mech.replaced_total) > 3 * 3  # several replacements per layer and task: aggregation matters
    # Only on a task's last step, at most one per layer per task, the layer names of the layer labels.
    assert all(i == per_task - 1 for _, i, _ in changes)
    labels = {f"layers.{k}" for k in range(3)}
    for epoch in range(3):
        layers = [e.layer for ep, _, e in changes if ep == epoch]
        assert len(layers) == len(set(layers)) and set(layers) <= labels
    assert all(e.kind == "replace" and e.reason == mechanism and e.epoch == ep and e.units > 0
               for ep, _, e in changes)
    # Units add up to what the mechanism replaced, layer by layer.
    for k, total in enumerate(exp.mech.replaced_total):
        assert sum(e.units for _, _, e in changes if e.layer == f"layers.{k}") == total
    # The diagnostics still come out as samples in between.
    assert any(isinstance(e, MetricSamples) for _, _, events in steps for e in events)


def test_backprop_reports_no_structural_change_and_quality_metric_is_reported() -> None:
    exp = _experiment("none")
    steps = _run_tasks(exp, 2)
    assert not any(isinstance(e, StructuralChange) for _, _, events in steps for e in events)
    report = exp.end_epoch(2, "stream")
    metric = exp.quality_metric("stream")
    assert metric in report.metrics and report.metrics[metric] >= 0

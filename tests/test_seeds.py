"""Seed lifecycle, blending continuity, reservoir bound, and the germination controller."""

from __future__ import annotations

import pytest
import torch

from engine.mechanisms.germination import GerminationController
from engine.mechanisms.seed_plans import BlendSeed, CullSeed, FossilizeSeed, GerminateSeed
from engine.models.trunk import SeededMLP
from engine.surgery import PlanError, apply_plan


def make(seed: int = 0, **kw: float) -> tuple[SeededMLP, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = SeededMLP(2, 8, 2, 3, 2, reservoir_size=32, **kw)
    return model, torch.optim.Adam(model.trunk_parameters(), lr=1e-2)


def germinate_and_train(model: SeededMLP, opt: torch.optim.Optimizer, sid: str, x: torch.Tensor) -> str:
    apply_plan(model, opt, GerminateSeed(sid))
    gen = torch.Generator().manual_seed(0)
    model.train()
    outcome = "training"
    for _ in range(400):
        model(x)
        outcome = model.seeds[sid].train_step(gen)
        if outcome != "training":
            break
    return outcome


def test_dormant_and_training_seeds_have_no_effect() -> None:
    model, opt = make()
    x = torch.randn(16, 2)
    before = model(x).detach()
    apply_plan(model, opt, GerminateSeed("l0_s0"))
    model.train()
    model(x)
    model.seeds["l0_s0"].train_step(torch.Generator().manual_seed(1))
    assert torch.equal(model(x).detach(), before)


def test_seed_training_never_reaches_trunk_and_reservoir_is_bounded() -> None:
    model, opt = make()
    x = torch.randn(50, 2)
    assert germinate_and_train(model, opt, "l1_s1", x) == "ready"
    assert all(p.grad is None for p in model.trunk_parameters())
    seed = model.seeds["l1_s1"]
    assert seed.reservoir.shape == (32, 4)  # capacity x chunk width, never more
    assert int(seed.res_count) > 32


def test_blending_is_continuous_into_active() -> None:
    model, opt = make()
    x = torch.randn(64, 2)
    assert germinate_and_train(model, opt, "l0_s1", x) == "ready"
    apply_plan(model, opt, BlendSeed("l0_s1", blend_steps=10))
    seed = model.seeds["l0_s1"]
    assert seed.state == "blending"
    model.eval()
    outputs = [model(x).detach()]
    while seed.state == "blending":
        seed.advance_blend()
        outputs.append(model(x).detach())
    assert seed.state == "active" and seed.alpha == 1.0
    assert len(outputs) == 11  # exactly blend_steps ramp steps
    jumps = [float((b - a).abs().max()) for a, b in zip(outputs, outputs[1:])]
    # Each ramp step moves the output by a similar small amount, and the step
    # that ends blending is no bigger: active is the alpha=1 point of the ramp.
    assert min(jumps) > 0
    assert jumps[-1] <= 1.5 * sorted(jumps)[len(jumps) // 2]
    total = float((outputs[-1] - outputs[0]).abs().max())
    assert jumps[-1] < 0.5 * total
    seed.advance_blend()  # already active: nothing changes
    assert torch.equal(model(x).detach(), outputs[-1])


def test_blending_child_joins_main_optimizer_and_cull_removes_it() -> None:
    model, opt = make()
    x = torch.randn(64, 2)
    germinate_and_train(model, opt, "l0_s0", x)
    n_groups = len(opt.param_groups)
    apply_plan(model, opt, BlendSeed("l0_s0", 5, lr=1e-3))
    assert len(opt.param_groups) == n_groups + 1
    assert opt.param_groups[-1]["lr"] == 1e-3  # the child's own rate, not the trunk's 1e-2
    assert model.seeds["l0_s0"].opt is None
    apply_plan(model, opt, CullSeed("l0_s0", "test"))
    assert len(opt.param_groups) == n_groups
    assert model.seeds["l0_s0"].state == "failed" and model.seeds["l0_s0"].alpha == 0.0


def test_child_can_keep_its_own_optimizer_and_fossilizing_freezes_it() -> None:
    model, opt = make()
    x = torch.randn(64, 2)
    germinate_and_train(model, opt, "l0_s0", x)
    n_groups = len(opt.param_groups)
    apply_plan(model, opt, BlendSeed("l0_s0", 1))  # lr None: its own optimizer
    seed = model.seeds["l0_s0"]
    assert len(opt.param_groups) == n_groups and seed.opt is not None
    with pytest.raises(PlanError, match="active"):
        apply_plan(model, opt, FossilizeSeed("l0_s0"))  # still blending
    seed.advance_blend()
    apply_plan(model, opt, FossilizeSeed("l0_s0", "accepted"))
    assert seed.state == "fossilized" and seed.alpha == 1.0 and seed.opt is None
    assert not any(p.requires_grad for p in seed.child.parameters())
    out = model(x)
    assert out.requires_grad  # the trunk still trains; the child's output is part of the model
    with pytest.raises(PlanError, match="fossilized"):
        apply_plan(model, opt, CullSeed("l0_s0"))


def test_non_converging_seed_fails() -> None:
    model, opt = make(progress_thresh=1.0, max_train_steps=5)
    assert germinate_and_train(model, opt, "l0_s0", torch.randn(16, 2)) == "failed"


def test_illegal_transition_is_rejected() -> None:
    model, opt = make()
    with pytest.raises(PlanError, match="dormant"):
        apply_plan(model, opt, GerminateSeed("l0_s0")) or apply_plan(model, opt, GerminateSeed("l0_s0"))
    with pytest.raises(PlanError, match="seed"):
        apply_plan(model, opt, BlendSeed("l0_s1", 5))


def test_seed_state_round_trips_through_state_dict() -> None:
    model, opt = make()
    germinate_and_train(model, opt, "l1_s0", torch.randn(40, 2))
    apply_plan(model, opt, BlendSeed("l1_s0", 7))
    model.seeds["l1_s0"].advance_blend()
    clone, _ = make(seed=1)
    clone.load_state_dict(model.state_dict())
    a, b = model.seeds["l1_s0"], clone.seeds["l1_s0"]
    assert (b.state, b.alpha, b.train_steps) == (a.state, a.alpha, a.train_steps)
    x = torch.randn(8, 2)
    assert torch.allclose(model.eval()(x), clone.eval()(x))


def test_controller_germinates_worst_seed_after_patience() -> None:
    c = GerminationController(patience=3, delta=0.01, acc_threshold=0.9)
    health = {"a": 0.5, "b": 0.1, "c": 0.3}
    assert c.observe(1.0, 0.5, health) is None  # improvement from inf
    assert c.observe(0.995, 0.5, health) is None  # < delta: plateau 1
    assert c.observe(0.999, 0.5, health) is None  # plateau 2
    plan = c.observe(0.998, 0.5, health)  # plateau 3 -> germinate lowest health
    assert plan == GerminateSeed("b", plan.reason) and c.plateau == 0
    assert c.observe(0.998, 0.5, health) is None  # fresh patience window


def test_controller_respects_accuracy_threshold_and_dormant_pool() -> None:
    c = GerminationController(patience=1, delta=0.0, acc_threshold=0.8)
    c.observe(1.0, 0.5, {"a": 1.0})
    assert c.observe(1.0, 0.85, {"a": 1.0}) is None  # accurate enough
    assert c.observe(1.0, 0.5, {}) is None  # nothing dormant
    restored = GerminationController(1, 0.0, 0.8)
    restored.load_state_dict(c.state_dict())
    assert restored.state_dict() == c.state_dict()

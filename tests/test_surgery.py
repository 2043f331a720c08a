"""Tests for engine.surgery: plans applied to a model and its optimizer state."""

from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch
from torch import nn

from engine.mechanisms.plans import (
    AddParameters,
    GrowUnits,
    PlanError,
    PruneUnits,
    ReinitUnits,
    RemoveParameters,
)
from engine.surgery import apply_plan, apply_plans

OptFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]

OPTIMIZERS: dict[str, OptFactory] = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, amsgrad=True),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9),
}


def make_mlp(seed: int = 0) -> nn.Sequential:
    """4-8-8-3 MLP; Linear layers at paths "0", "2", "4"."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)
    )


def batch(seed: int = 1, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randn(n, 3, generator=g)


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 3, seed: int = 1) -> None:
    x, y = batch(seed)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def trained(name: str) -> tuple[nn.Sequential, torch.optim.Optimizer]:
    model = make_mlp()
    opt = OPTIMIZERS[name](list(model.parameters()))
    train(model, opt)
    return model, opt


def state_snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, dict]:
    """Deep copy of the optimizer state keyed by parameter name."""
    return {n: copy.deepcopy(opt.state[p]) for n, p in model.named_parameters() if p in opt.state}


def shaped_keys(state: dict, shape: torch.Size) -> list[str]:
    return [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.shape == shape]


def states_equal(a: dict[str, dict], b: dict[str, dict]) -> bool:
    """Whether two :func:`state_snapshot` results hold the same keys and values."""
    if a.keys() != b.keys() or any(a[n].keys() != b[n].keys() for n in a):
        return False
    return all(torch.equal(v, b[n][k]) if isinstance(v, torch.Tensor) else v == b[n][k]
               for n in a for k, v in a[n].items())


def assert_optimizer_consistent(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    """Groups hold exactly the model's current Parameters and state has no stale keys."""
    in_groups = [p for g in opt.param_groups for p in g["params"]]
    model_params = list(model.parameters())
    assert {id(p) for p in in_groups} == {id(p) for p in model_params}
    assert len(in_groups) == len(model_params)
    assert len(opt.state) == len(model_params)
    for p, st in opt.state.items():
        assert any(p is q for q in model_params), "stale parameter key in optimizer.state"
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                assert v.shape == p.shape, (k, v.shape, p.shape)


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_grow_then_prune_maps_state(opt_name: str) -> None:
    model, opt = trained(opt_name)
    before = state_snapshot(model, opt)
    keys = shaped_keys(before["0.weight"], torch.Size([8, 4]))
    assert keys, "optimizer kept no param-shaped state; test would be vacuous"
    assert all(before["0.weight"][k].abs().sum() > 0 for k in keys)
    old_w0 = model[0].weight
    old_positions = [(gi, i) for gi, g in enumerate(opt.param_groups)
                     for i, p in enumerate(g["params"]) if p is old_w0]
    x, _ = batch(5)
    with torch.no_grad():
        out_before = model(x).clone()

    # --- grow layer "0" by 3 units -------------------------------------------------
    apply_plan(model, opt, GrowUnits("0", "2", 3), torch.Generator().manual_seed(0))
    l0, l2 = model[0], model[2]
    assert (l0.out_features, l0.weight.shape, l0.bias.shape) == (11, (11, 4), (11,))
    assert (l2.in_features, l2.weight.shape) == (11, (8, 11))
    assert l0.weight is not old_w0
    assert [(gi, i) for gi, g in enumerate(opt.param_groups)
            for i, p in enumerate(g["params"]) if p is l0.weight] == old_positions
    assert_optimizer_consistent(model, opt)
    for k in keys:
        assert torch.equal(opt.state[l0.weight][k][:8], before["0.weight"][k])
        assert torch.equal(opt.state[l0.weight][k][8:], torch.zeros(3, 4))
        assert torch.equal(opt.state[l0.bias][k][:8], before["0.bias"][k])
        assert torch.equal(opt.state[l0.bias][k][8:], torch.zeros(3))
        assert torch.equal(opt.state[l2.weight][k][:, :8], before["2.weight"][k])
        assert torch.equal(opt.state[l2.weight][k][:, 8:], torch.zeros(8, 3))
        assert torch.equal(opt.state[model[4].weight][k], before["4.weight"][k])
    if "step" in before["0.weight"]:
        assert torch.equal(opt.state[l0.weight]["step"], before["0.weight"]["step"])
    assert torch.equal(l2.weight[:, 8:], torch.zeros(8, 3))
    assert l0.weight[8:].abs().sum() > 0
    with torch.no_grad():
        assert torch.allclose(model(x), out_before, atol=1e-6)

    # A step after growth runs and moves the new parameters (outgoing columns at
    # once; incoming rows once the outgoing columns are non-zero).
    new_rows = l0.weight[8:].detach().clone()
    new_cols = l2.weight[:, 8:].detach().clone()
    train(model, opt, steps=1)
    assert not torch.equal(l2.weight[:, 8:], new_cols)
    train(model, opt, steps=1)
    assert not torch.equal(l0.weight[8:], new_rows)
    assert_optimizer_consistent(model, opt)

    # --- prune units of layer "2" ------------------------------------------------
    before = state_snapshot(model, opt)
    pruned = (1, 6, 3)
    kept = [i for i in range(8) if i not in pruned]
    w2, w4 = model[2].weight.detach().clone(), model[4].weight.detach().clone()
    apply_plan(model, opt, PruneUnits("2", "4", pruned))
    l2, l4 = model[2], model[4]
    assert (l2.out_features, l2.weight.shape, l4.in_features, l4.weight.shape) == (
        5, (5, 11), 5, (3, 5))
    assert torch.equal(l2.weight, w2[kept]) and torch.equal(l4.weight, w4[:, kept])
    assert_optimizer_consistent(model, opt)
    prune_keys = shaped_keys(before["2.weight"], torch.Size([8, 11]))
    assert prune_keys, "no param-shaped state to map; the loop below would check nothing"
    for k in prune_keys:
        assert torch.equal(opt.state[l2.weight][k], before["2.weight"][k][kept])
        assert torch.equal(opt.state[l2.bias][k], before["2.bias"][k][kept])
        assert torch.equal(opt.state[l4.weight][k], before["4.weight"][k][:, kept])
        assert torch.equal(opt.state[l4.bias][k], before["4.bias"][k])
    w_after = l2.weight.detach().clone()
    train(model, opt, steps=1)
    assert not torch.equal(l2.weight, w_after)
    assert_optimizer_consistent(model, opt)


def test_grow_is_deterministic_given_generator() -> None:
    a, b = make_mlp(), make_mlp()
    apply_plan(a, None, GrowUnits("2", "4", 2), torch.Generator().manual_seed(7))
    apply_plan(b, None, GrowUnits("2", "4", 2), torch.Generator().manual_seed(7))
    assert torch.equal(a[2].weight, b[2].weight)
    c = make_mlp()
    apply_plan(c, None, GrowUnits("2", "4", 2), torch.Generator().manual_seed(8))
    assert not torch.equal(a[2].weight, c[2].weight)


def test_grow_output_layer_and_init_bounds() -> None:
    model = make_mlp()
    apply_plan(model, None, GrowUnits("4", None, 2, init="he_uniform"),
               torch.Generator().manual_seed(0))
    assert model[4].weight.shape == (5, 8) and model(torch.randn(2, 4)).shape == (2, 5)
    assert model[4].weight[3:].abs().max() <= (6 / 8) ** 0.5
    assert torch.equal(model[4].bias[3:], torch.zeros(2))


def test_grow_keeps_grad_and_pending_state_alignment() -> None:
    model, opt = trained("adam")
    x, y = batch()
    nn.functional.mse_loss(model(x), y).backward()
    g = model[0].weight.grad.clone()
    apply_plan(model, opt, GrowUnits("0", "2", 2), torch.Generator().manual_seed(0))
    assert torch.equal(model[0].weight.grad[:8], g)
    assert torch.equal(model[0].weight.grad[8:], torch.zeros(2, 4))
    opt.step()  # uses the remapped grads without shape errors


@pytest.mark.parametrize("opt_name", ["adam", "sgd_momentum"])
def test_reinit_zero_outgoing_keeps_function_except_removed_units(opt_name: str) -> None:
    model, opt = trained(opt_name)
    idx = (0, 5)
    x, _ = batch(9)
    with torch.no_grad():
        h = torch.relu(model[2](torch.relu(model[0](x))))        # [n, 8] layer-2 activations
        contrib = h[:, list(idx)] @ model[4].weight[:, list(idx)].T  # [n, 3] removed units
        out_before = model(x).clone()
    before = state_snapshot(model, opt)
    w2_before = model[2].weight.detach().clone()
    ids = {id(p) for p in model.parameters()}
    apply_plan(model, opt, ReinitUnits("2", "4", idx), torch.Generator().manual_seed(3))
    assert {id(p) for p in model.parameters()} == ids  # in place, same Parameters
    assert_optimizer_consistent(model, opt)
    other = [i for i in range(8) if i not in idx]
    assert torch.equal(model[2].weight[other], w2_before[other])
    assert not torch.equal(model[2].weight[list(idx)], w2_before[list(idx)])
    assert torch.equal(model[2].bias[list(idx)], torch.zeros(2))
    assert torch.equal(model[4].weight[:, list(idx)], torch.zeros(3, 2))
    with torch.no_grad():
        assert torch.allclose(model(x), out_before - contrib, atol=1e-5)
    keys = shaped_keys(before["2.weight"], torch.Size([8, 8]))
    assert keys and all(before["2.weight"][k][list(idx)].abs().sum() > 0 for k in keys)  # something to reset
    for k in keys:
        st2, st2b, st4 = opt.state[model[2].weight], opt.state[model[2].bias], \
            opt.state[model[4].weight]
        assert torch.equal(st2[k][list(idx)], torch.zeros(2, 8))
        assert torch.equal(st2[k][other], before["2.weight"][k][other])
        assert torch.equal(st2b[k][list(idx)], torch.zeros(2))
        assert torch.equal(st4[k][:, list(idx)], torch.zeros(3, 2))
        assert torch.equal(st4[k][:, other], before["4.weight"][k][:, other])
    cols = model[4].weight[:, list(idx)].detach().clone()
    train(model, opt, steps=1)
    assert not torch.equal(model[4].weight[:, list(idx)], cols)


def test_reinit_fold_bias_restores_mean_output() -> None:
    model, opt = trained("adam")
    idx = [2, 4, 7]
    x, _ = batch(11, n=64)
    with torch.no_grad():
        h = torch.relu(model[2](torch.relu(model[0](x))))
        mean_contrib = (h[:, idx] @ model[4].weight[:, idx].T).mean(0)  # [3]
        mean_before = model(x).mean(0)
    assert mean_contrib.abs().max() > 1e-2  # without the fold the mean output would move
    apply_plan(model, opt, ReinitUnits("2", "4", tuple(idx), fold_bias=tuple(mean_contrib)),
               torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x).mean(0), mean_before, atol=1e-5)
        assert not torch.allclose(model(x), model(x) * 0 + mean_before, atol=1e-3)
    train(model, opt, steps=1)


def test_reinit_without_zero_outgoing_keeps_columns() -> None:
    model = make_mlp()
    cols = model[4].weight[:, [1]].detach().clone()
    row = model[2].weight[1].detach().clone()
    apply_plan(model, None, ReinitUnits("2", "4", (1,), zero_outgoing=False))
    assert torch.equal(model[4].weight[:, [1]], cols)
    assert not torch.equal(model[2].weight[1], row)  # the plan was applied: incoming weights re-drawn


def test_add_and_remove_parameters() -> None:
    model = nn.ModuleDict({"main": make_mlp(0), "child": make_mlp(1)})
    opt = torch.optim.Adam(model["main"].parameters(), lr=1e-2)
    x, y = batch()

    def step() -> None:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model["main"](x) + model["child"](x), y)
        loss.backward()
        opt.step()

    step()
    child_w = model["child"][0].weight.detach().clone()
    apply_plan(model, opt, AddParameters("child", {"lr": 1e-3}))
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == 1e-3
    assert opt.param_groups[1]["betas"] == opt.defaults["betas"]
    assert [id(p) for p in opt.param_groups[1]["params"]] == [
        id(p) for p in model["child"].parameters()]
    assert all(p not in opt.state for p in model["child"].parameters())
    step()
    assert not torch.equal(model["child"][0].weight, child_w)
    assert_optimizer_consistent(model, opt)
    with pytest.raises(PlanError, match="already registered"):
        apply_plan(model, opt, AddParameters("child"))

    apply_plan(model, opt, RemoveParameters("child"))
    assert len(opt.param_groups) == 1
    assert all(p not in opt.state for p in model["child"].parameters())
    assert len(opt.state) == len(list(model["main"].parameters()))
    child_w = model["child"][0].weight.detach().clone()
    step()
    assert torch.equal(model["child"][0].weight, child_w)  # no longer trained
    with pytest.raises(PlanError, match="registered in the optimizer"):
        apply_plan(model, opt, RemoveParameters("child"))


def test_apply_plans_sequence() -> None:
    model, opt = trained("sgd_momentum")
    apply_plans(model, opt, [GrowUnits("0", "2", 4), PruneUnits("0", "2", (0, 11))],
                torch.Generator().manual_seed(0))
    assert model[0].weight.shape == (10, 4) and model[2].weight.shape == (8, 10)
    assert_optimizer_consistent(model, opt)
    train(model, opt, steps=1)


@pytest.mark.parametrize(
    "plan, match",
    [
        (GrowUnits("9", "2", 1), r"'layer': '9' .*valid: \['0', '2', '4'\]"),
        (GrowUnits("1", "2", 1), r"'layer': '1' .*nn.Linear"),
        (PruneUnits("0", "3", (0,)), r"'next_layer': '3' .*valid: \['0', '2', '4'\]"),
        (GrowUnits("2", "0", 1), r"'next_layer': '0' .*in_features == 2.out_features == 8"),
        (PruneUnits("0", "2", (3, 8)), r"'indices': \[8\] .*0\.\.7"),
        (PruneUnits("4", None, (0, 1, 2)), r"'indices'.*at most 2 of the 3 units"),
        (ReinitUnits("2", "4", (0,), fold_bias=(1.0, 2.0)), r"'fold_bias'.*3 outputs"),
        (AddParameters("nope"), r"'params_owner': 'nope'"),
    ],
)
def test_bad_plans_raise_and_leave_model_untouched(plan: object, match: str) -> None:
    model, opt = trained("adam")
    params = [p.detach().clone() for p in model.parameters()]
    state = state_snapshot(model, opt)
    with pytest.raises(ValueError, match=match):
        apply_plan(model, opt, plan)  # type: ignore[arg-type]
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))
    assert states_equal(state_snapshot(model, opt), state)  # values too, not only which parameters have state
    assert_optimizer_consistent(model, opt)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: GrowUnits("0", "2", 0), r"'count': 0 .*>= 1"),
        (lambda: GrowUnits("0", "2", 1, init="orthogonal"), r"'init'.*kaiming"),
        (lambda: GrowUnits("0", "0", 1), r"'next_layer'.*different"),
        (lambda: PruneUnits("0", "2", ()), r"'indices'.*at least one"),
        (lambda: PruneUnits("0", "2", (1, 1)), r"'indices': \[1\] .*at most once"),
        (lambda: PruneUnits("0", "2", (-1,)), r"'indices': \[-1\] .*non-negative"),
        (lambda: PruneUnits("0", "2", (1.5,)), r"'indices'.*integer"),
        (lambda: ReinitUnits("4", None, (0,), fold_bias=(0.0,)), r"'fold_bias'.*next_layer"),
        (lambda: ReinitUnits("2", "4", (0,), fold_bias=(float("nan"),) * 3), r"finite"),
        (lambda: AddParameters("child", {"params": []}), r"'group'.*no 'params'"),
    ],
)
def test_bad_plan_construction(build: Callable[[], object], match: str) -> None:
    with pytest.raises(PlanError, match=match):
        build()
    assert issubclass(PlanError, ValueError)


def test_unmappable_optimizer_state_is_a_clear_error() -> None:
    model, opt = trained("adam")
    opt.state[model[0].weight]["odd"] = torch.zeros(5)
    with pytest.raises(PlanError, match=r"optimizer.state\[0.weight\]\['odd'\].*\(8, 4\)"):
        apply_plan(model, opt, GrowUnits("0", "2", 1))
    assert model[0].weight.shape == (8, 4)


def test_optimizer_required_for_membership_plans() -> None:
    with pytest.raises(PlanError, match="'optimizer'"):
        apply_plan(make_mlp(), None, RemoveParameters("0"))
    with pytest.raises(PlanError, match="'plan'"):
        apply_plan(make_mlp(), None, "grow")  # type: ignore[arg-type]


def test_state_dict_round_trip_after_surgery() -> None:
    model, opt = trained("adam")
    apply_plans(model, opt, [GrowUnits("0", "2", 2), PruneUnits("2", "4", (0,))],
                torch.Generator().manual_seed(0))
    sd = copy.deepcopy(opt.state_dict())
    clone = copy.deepcopy(model)
    opt2 = torch.optim.Adam(clone.parameters(), lr=1e-2)
    opt2.load_state_dict(sd)
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(opt.state[p]["exp_avg"], opt2.state[q]["exp_avg"])
    train(model, opt, steps=1)
    train(clone, opt2, steps=1)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), clone.parameters()))

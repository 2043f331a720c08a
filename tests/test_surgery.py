"""Tests for engine.surgery: plans applied to a model and its optimizer state."""

from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch
from torch import nn

from engine.mechanisms.plans import (
    AddParameters,
    CloneUnits,
    GrowUnits,
    PlanError,
    PruneUnits,
    ReinitUnits,
    RemoveParameters,
    SetUnitGain,
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


# ----------------------------------------------------------------- the char transformer's unit groups

def char_model(steps: int = 3) -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor]:
    """Small CharTransformer (vocab 11, 2 blocks, 2 heads, d 16, block 8) after ``steps`` AdamW steps."""
    from engine.models.char_transformer import CharTransformer

    model = CharTransformer(11, 2, 2, 16, 8, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 11, (4, 8), generator=g)
    for _ in range(steps):
        opt.zero_grad()
        model.loss(x, torch.roll(x, 1, 1)).backward()
        opt.step()
    with torch.no_grad():  # distinct per-unit gains, so a mis-sliced buffer shows
        for m in (model.blocks[0].mlp, model.blocks[0].attn):
            m.gain.copy_(torch.linspace(0.5, 1.5, m.gain.numel()))
    return model, opt, x


def _unit_state(model: nn.Module, opt: torch.optim.Optimizer, layer: str, nxt: str) -> dict[str, torch.Tensor]:
    """exp_avg / exp_avg_sq of a group's incoming rows, biases and outgoing columns, units along dim 0."""
    lin, out = model.get_submodule(layer), model.get_submodule(nxt)
    res = {}
    for k in ("exp_avg", "exp_avg_sq"):
        res[f"w.{k}"] = opt.state[lin.weight][k].clone()
        res[f"b.{k}"] = opt.state[lin.bias][k].clone()
        res[f"o.{k}"] = opt.state[out.weight][k].T.clone()  # [units, next_out]
    return res


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in list(model.named_parameters()) + list(model.named_buffers())}


@pytest.mark.parametrize("kind", ["mlp", "attn"])
def test_char_prune_keeps_state_and_equals_zero_gain(kind: str) -> None:
    model, opt, x = char_model()
    unit = next(u for u in model.unit_layers() if u.name == f"blocks.0.{kind}")
    n = model.get_submodule(unit.layer).out_features
    pruned = (1, 2, 9, 12) if kind == "attn" else (0, 5, 63)  # attn: channels of both heads
    kept = [i for i in range(n) if i not in pruned]
    before = _unit_state(model, opt, unit.layer, unit.next_layer)
    assert before["w.exp_avg"].abs().sum() > 0
    bufs = {b: model.get_buffer(b).clone() for b in unit.buffers}
    w_in = model.get_submodule(unit.layer).weight.detach().clone()
    with torch.no_grad():  # the pruned model must compute what the full one does with those gains at 0
        gain = model.get_buffer(f"{unit.name}.gain")
        saved = gain.clone()
        gain[list(pruned)] = 0.0
        expected = model(x).clone()
        gain.copy_(saved)
    apply_plan(model, opt, PruneUnits(unit.layer, unit.next_layer, pruned, unit.buffers))
    assert model.unit_counts()[unit.name] == len(kept)
    for b, old in bufs.items():
        new = model.get_buffer(b)
        assert new.dtype == old.dtype and new.device == old.device and torch.equal(new, old[kept])
    assert torch.equal(model.get_submodule(unit.layer).weight, w_in[kept])
    after = _unit_state(model, opt, unit.layer, unit.next_layer)
    for k, v in before.items():
        assert torch.equal(after[k], v[kept]), k
    assert_optimizer_consistent(model, opt)
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-6)
    opt.zero_grad()
    model.loss(x, x).backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_char_clone_ffn_units() -> None:
    model, opt, x = char_model()
    layer, nxt, bufs = "blocks.1.mlp.fc", "blocks.1.mlp.proj", ("blocks.1.mlp.gain",)
    fc = model.get_submodule(layer)
    w, b = fc.weight.detach().clone(), fc.bias.detach().clone()
    before = _unit_state(model, opt, layer, nxt)
    with torch.no_grad():
        out_before = model(x).clone()
    parents = (3, 3, 40)
    apply_plan(model, opt, CloneUnits(layer, nxt, parents, 0.1, bufs), torch.Generator().manual_seed(0))
    fc, proj = model.get_submodule(layer), model.get_submodule(nxt)
    assert fc.out_features == proj.in_features == 67
    with torch.no_grad():
        assert torch.allclose(model(x), out_before, atol=1e-6)  # outgoing columns 0: function unchanged
    new = fc.weight[64:].detach()
    std = w[list(parents)].std(dim=1, correction=0, keepdim=True)
    delta = (new - w[list(parents)]) / (0.1 * std)  # the N(0, 1) draws
    assert not torch.equal(new[0], new[1])  # two children of one parent differ
    assert delta.abs().max() < 6 and 0.5 < delta.std() < 1.5
    assert torch.equal(fc.bias[64:], b[list(parents)])
    assert torch.equal(proj.weight[:, 64:], torch.zeros(16, 3))
    assert torch.equal(model.get_buffer(bufs[0])[64:], torch.ones(3))  # default gain of a new unit
    after = _unit_state(model, opt, layer, nxt)
    for k, v in before.items():
        assert torch.equal(after[k][:64], v), k
        assert torch.equal(after[k][64:], torch.zeros_like(after[k][64:])), k
    assert_optimizer_consistent(model, opt)
    # same generator state, same children
    other, opt2, _ = char_model()
    apply_plan(other, opt2, CloneUnits(layer, nxt, parents, 0.1, bufs), torch.Generator().manual_seed(0))
    assert torch.equal(other.get_submodule(layer).weight, fc.weight)


def test_char_attention_channels_across_heads_and_into_a_head() -> None:
    model, opt, x = char_model()
    attn = model.blocks[0].attn
    unit = model.unit_layers()[0]
    assert unit.name == "blocks.0.attn"
    heads, slots = attn.v_head.clone(), attn.v_slot.clone()
    apply_plan(model, opt, PruneUnits(unit.layer, unit.next_layer, (0, 5, 8, 15), unit.buffers))
    kept = [i for i in range(16) if i not in (0, 5, 8, 15)]
    assert torch.equal(attn.v_head, heads[kept]) and torch.equal(attn.v_slot, slots[kept])
    assert attn.v_head.dtype == attn.v_slot.dtype == torch.int64
    assert model(x).shape == (4, 8, 11)
    before = _unit_state(model, opt, unit.layer, unit.next_layer)
    with torch.no_grad():
        out_before = model(x).clone()
    # two children of channel 9 (head 1) at new slots 8 and 9 of head 1 (beyond head_dim), one of channel 0 (head 0)
    parents = (7, 7, 0)
    assert attn.v_head[7] == 1 and attn.v_head[0] == 0
    top1, top0 = int(attn.v_slot[attn.v_head == 1].max()), int(attn.v_slot[attn.v_head == 0].max())
    values = ((1.0, 1.0, 1.0), (1, 1, 0), (top1 + 1, top1 + 2, top0 + 1))
    apply_plan(model, opt, CloneUnits(unit.layer, unit.next_layer, parents, 0.2, unit.buffers, values),
               torch.Generator().manual_seed(0))
    assert attn.v_head.tolist()[-3:] == [1, 1, 0]
    assert attn.v_slot.tolist()[-3:] == [top1 + 1, top1 + 2, top0 + 1]
    pairs = list(zip(attn.v_head.tolist(), attn.v_slot.tolist()))
    assert len(set(pairs)) == len(pairs) == attn.v.out_features == attn.o.in_features == 15
    with torch.no_grad():
        assert torch.allclose(model(x), out_before, atol=1e-6)
    after = _unit_state(model, opt, unit.layer, unit.next_layer)
    for k, v in before.items():
        assert torch.equal(after[k][:12], v) and not after[k][12:].any(), k
    assert_optimizer_consistent(model, opt)
    for _ in range(2):  # the children learn (outgoing columns move away from 0)
        opt.zero_grad()
        model.loss(x, torch.roll(x, 1, 1)).backward()
        opt.step()
    assert attn.o.weight[:, 12:].abs().sum() > 0 and torch.isfinite(model(x)).all()


def test_grow_units_extends_buffers_with_defaults_and_values() -> None:
    model, opt, x = char_model()
    apply_plan(model, opt, GrowUnits("blocks.0.mlp.fc", "blocks.0.mlp.proj", 2, buffers=("blocks.0.mlp.gain",)),
               torch.Generator().manual_seed(0))
    assert model.blocks[0].mlp.gain.tolist()[-2:] == [1.0, 1.0] and model.blocks[0].mlp.gain.numel() == 66
    apply_plan(model, opt, GrowUnits("blocks.0.mlp.fc", "blocks.0.mlp.proj", 1, buffers=("blocks.0.mlp.gain",),
                                     buffer_values=((0.25,),)))
    assert model.blocks[0].mlp.gain[-1] == 0.25
    assert_optimizer_consistent(model, opt)
    assert model(x).shape == (4, 8, 11)


def test_set_unit_gain_in_place() -> None:
    model, opt, x = char_model()
    gain = model.blocks[1].mlp.gain
    state = state_snapshot(model, opt)
    apply_plan(model, opt, SetUnitGain("blocks.1.mlp.gain", (9, 2), (0.5, 0.0)))
    assert model.blocks[1].mlp.gain is gain and gain[9] == 0.5 and gain[2] == 0.0 and gain[3] == 1.0
    assert states_equal(state_snapshot(model, opt), state)


ATTN = ("blocks.0.attn.gain", "blocks.0.attn.v_head", "blocks.0.attn.v_slot")


@pytest.mark.parametrize(
    "plan, match",
    [
        (PruneUnits("blocks.0.mlp.fc", "blocks.0.mlp.proj", (1,), ("blocks.0.attn.gain",)),
         r"'buffers': 'blocks.0.attn.gain' .*one entry per unit \(64\); 1-D buffers there: "
         r"blocks.0.attn.gain \(16\), blocks.0.attn.v_head \(16\)"),
        (PruneUnits("blocks.0.mlp.fc", "blocks.0.mlp.proj", (1,), ("blocks.0.mlp.nope",)), r"'buffers'"),
        (PruneUnits("blocks.0.mlp.fc", "blocks.0.mlp.proj", (1, 64), ("blocks.0.mlp.gain",)),
         r"'indices': \[64\] .*0\.\.63"),
        (CloneUnits("blocks.0.mlp.fc", "blocks.0.mlp.proj", (64,), 0.1), r"'parents': \[64\]"),
        (CloneUnits("blocks.0.attn.v", "blocks.0.attn.o", (1,), 0.1, ATTN), r"'buffer_values'.*explicit values"),
        (CloneUnits("blocks.0.attn.v", "blocks.0.attn.o", (1,), 0.1, ATTN, ((1,), (0.5,), (9,))),
         r"'buffer_values': \(0.5,\) .*whole numbers"),
        (GrowUnits("blocks.0.mlp.fc", "blocks.0.mlp.proj", 1, buffers=("blocks.1.mlp.gain", "blocks.0.attn.gain")),
         r"'buffers': 'blocks.0.attn.gain'"),
        (SetUnitGain("blocks.0.attn.v_head", (0,), (1.0,)), r"'buffer'.*floating-point"),
        (SetUnitGain("blocks.0.mlp.gain", (64,), (1.0,)), r"'indices': \[64\]"),
    ],
)
def test_bad_unit_plans_change_nothing(plan: object, match: str) -> None:
    model, opt, x = char_model()
    params, state = _params(model), state_snapshot(model, opt)
    with pytest.raises(PlanError, match=match):
        apply_plan(model, opt, plan, torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    after = _params(model)
    assert after.keys() == params.keys() and all(torch.equal(after[k], v) for k, v in params.items())
    assert states_equal(state_snapshot(model, opt), state)
    assert_optimizer_consistent(model, opt)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: GrowUnits("a", "b", 2, buffers=("a.gain",), buffer_values=((1.0,),)), r"'buffer_values'.*2 values"),
        (lambda: GrowUnits("a", "b", 1, buffers=("a.gain",), buffer_values=((1.0,), (2.0,))),
         r"'buffer_values'.*one sequence per buffer \(1\)"),
        (lambda: PruneUnits("a", "b", (0,), ("a.gain", "a.gain")), r"'buffers'.*distinct"),
        (lambda: CloneUnits("a", "b", (), 0.1), r"'parents'.*at least one"),
        (lambda: CloneUnits("a", "b", (0,), -1.0), r"'noise'"),
        (lambda: CloneUnits("a", "b", (0,), float("nan")), r"'noise'"),
        (lambda: SetUnitGain("a.gain", (0, 1), (1.0,)), r"'values'.*one per index \(2\)"),
        (lambda: SetUnitGain("a.gain", (0,), (float("inf"),)), r"'values'.*finite"),
    ],
)
def test_bad_unit_plan_construction(build: Callable[[], object], match: str) -> None:
    with pytest.raises(PlanError, match=match):
        build()

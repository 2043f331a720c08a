"""Head surgery on the char transformer: PruneHeads / CloneHead, state mapping, rebuild from counts."""

from __future__ import annotations

import copy
from typing import Any, Callable

import pytest
import torch
from torch import Tensor, nn

from engine.mechanisms.head_plans import CloneHead, PruneHeads, prune_plans
from engine.mechanisms.plans import PlanError, PruneUnits
from engine.models.char_transformer import CharTransformer
from engine.surgery import apply_plan, apply_plans

VOCAB, LAYERS, HEADS, D, BLOCK = 13, 2, 4, 32, 8
HD = D // HEADS
KEYS = ("exp_avg", "exp_avg_sq")


def trained(steps: int = 3, seed: int = 0) -> tuple[CharTransformer, torch.optim.Optimizer, Tensor]:
    """The test model after ``steps`` AdamW steps, with distinct per-channel gains (mis-slicing shows)."""
    model = CharTransformer(VOCAB, LAYERS, HEADS, D, BLOCK, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.randint(0, VOCAB, (4, BLOCK), generator=torch.Generator().manual_seed(seed + 1))
    for _ in range(steps):
        train_step(model, opt, x)
    with torch.no_grad():
        for a in model.attention_modules().values():
            a.gain.copy_(torch.linspace(0.5, 1.5, a.gain.numel()))
    return model, opt, x


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor) -> None:
    opt.zero_grad()
    model.loss(x, torch.roll(x, 1, 1)).backward()
    opt.step()


def logits(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).clone()


def prune_channels(model: CharTransformer, opt: torch.optim.Optimizer, path: str, channels: tuple[int, ...]) -> None:
    """Apoptosis-style removal of value channels, so the heads of ``path`` get unequal widths."""
    unit = next(u for u in model.unit_layers() if u.name == path)
    apply_plan(model, opt, PruneUnits(unit.layer, unit.next_layer, channels, unit.buffers))


def snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Parameters, buffers and optimizer state (deep copies) by name."""
    out: dict[str, Any] = {n: t.detach().clone() for n, t in model.named_parameters()}
    out.update({n: t.clone() for n, t in model.named_buffers()})
    out.update({f"state:{n}": copy.deepcopy(opt.state[p]) for n, p in model.named_parameters() if p in opt.state})
    return out


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def eq(u: Any, v: Any) -> bool:
        if isinstance(u, dict):
            return u.keys() == v.keys() and all(eq(u[k], v[k]) for k in u)
        return torch.equal(u, v) if isinstance(u, Tensor) else u == v
    return a.keys() == b.keys() and all(eq(a[k], b[k]) for k in a)


def assert_consistent(model: CharTransformer, opt: torch.optim.Optimizer) -> None:
    """Optimizer holds exactly the model's Parameters, state param-shaped; head layouts consistent."""
    params = list(model.parameters())
    assert [id(p) for g in opt.param_groups for p in g["params"]] == [id(p) for p in params]
    assert all(any(p is q for q in params) for p in opt.state)
    for p, st in opt.state.items():
        assert all(v.shape == p.shape for v in st.values() if isinstance(v, Tensor) and v.dim())
    for a in model.attention_modules().values():
        n = a.v.out_features
        assert a.q.weight.shape == a.k.weight.shape == (a.n_head * HD, D)
        assert a.head_gate.shape == (a.n_head,) and a.o.weight.shape == (D, n)
        assert a.gain.numel() == a.v_head.numel() == a.v_slot.numel() == n
        pairs = list(zip(a.v_head.tolist(), a.v_slot.tolist()))
        assert len(set(pairs)) == n and all(0 <= h < a.n_head for h, _ in pairs)


def head_state(model: CharTransformer, opt: torch.optim.Optimizer, path: str, head: int,
               channels: list[int] | None = None) -> list[Tensor]:
    """Weights and moments of one head: q/k rows and biases, v rows/biases and o columns of its channels."""
    a = model.get_submodule(path)
    rows = list(range(head * HD, (head + 1) * HD))
    ch = channels if channels is not None else (a.v_head == head).nonzero().flatten().tolist()
    out = []  # 7 x (value, exp_avg, exp_avg_sq), then gain and v_slot entries
    for p, idx, dim in ((a.q.weight, rows, 0), (a.q.bias, rows, 0), (a.k.weight, rows, 0), (a.k.bias, rows, 0),
                        (a.v.weight, ch, 0), (a.v.bias, ch, 0), (a.o.weight, ch, 1)):
        for t in [p.detach()] + [opt.state[p][k] for k in KEYS]:
            out.append(t.index_select(dim, torch.tensor(idx, dtype=torch.long)).clone())
    out += [a.gain[ch].clone(), a.v_slot[ch].clone()]
    return out


@pytest.mark.parametrize("channels", [(), (0, 1, 2, 9, 30)])
def test_prune_heads_equals_gating_and_keeps_state(channels: tuple[int, ...]) -> None:
    model, opt, x = trained()
    if channels:
        prune_channels(model, opt, "blocks.1.attn", channels)  # heads 0, 1, 3 lose channels
    a = model.blocks[1].attn
    gated = copy.deepcopy(model)
    gated.blocks[1].attn.head_gate[[1, 3]] = 0.0
    gated.blocks[0].attn.head_gate[2] = 0.0
    expected = logits(gated, x)
    assert not torch.allclose(expected, logits(model, x), atol=1e-4)  # the pruned heads mattered
    kept = {("blocks.1.attn", 0): 0, ("blocks.1.attn", 2): 1, ("blocks.0.attn", 3): 2}  # old -> new index
    before = {k: head_state(model, opt, *k) for k in kept}
    steps = {n: opt.state[p]["step"].clone() for n, p in model.named_parameters()}
    heads_before, slots_before = a.v_head.clone(), a.v_slot.clone()

    apply_plans(model, opt, prune_plans([("blocks.1.attn", 3), ("blocks.0.attn", 2), ("blocks.1.attn", 1)]))
    assert model.head_counts() == {"blocks.0.attn": 3, "blocks.1.attn": 2}
    torch.testing.assert_close(logits(model, x), expected, atol=1e-6, rtol=1e-5)
    for (path, old), new in kept.items():
        assert all(torch.equal(u, v) for u, v in zip(head_state(model, opt, path, new), before[(path, old)],
                                                     strict=True)), (path, old)
    keep = torch.isin(heads_before, torch.tensor([0, 2]))
    assert a.v_head.tolist() == [{0: 0, 2: 1}[h] for h in heads_before[keep].tolist()]
    assert torch.equal(a.v_slot, slots_before[keep])
    assert all(torch.equal(opt.state[p]["step"], steps[n]) for n, p in model.named_parameters())
    assert_consistent(model, opt)
    train_step(model, opt, x)
    assert torch.isfinite(logits(model, x)).all()


def _clone_check(model: CharTransformer, opt: torch.optim.Optimizer, path: str, head: int) -> Callable[[], None]:
    """State before a clone of ``head``; the returned check verifies the clone afterwards (noise 0)."""
    a = model.get_submodule(path)
    h, n = a.n_head, a.v.out_features
    ch = (a.v_head == head).nonzero().flatten().tolist()
    snap = snapshot(model, opt)
    before = {i: head_state(model, opt, path, i) for i in range(h)}

    def check() -> None:
        assert a.n_head == h + 1 and a.v.out_features == n + len(ch)
        new_ch = list(range(n, n + len(ch)))
        assert a.v_head.tolist()[n:] == [h] * len(ch) and torch.equal(a.v_slot[n:], a.v_slot[ch])
        assert torch.equal(a.head_gate, torch.ones(h + 1))
        copy_state = head_state(model, opt, path, h, new_ch)
        for i, (w, *moments) in enumerate(zip(*[iter(copy_state[:21])] * 3)):  # (value, exp_avg, exp_avg_sq)
            assert not moments[0].any() and not moments[1].any(), i  # new entries: zero state
            if i < 6:  # q/k/v rows and biases copy the parent's exactly (noise 0)
                assert torch.equal(w, before[head][3 * i])
        o_parent = snap[f"{path}.o.weight"][:, ch]
        assert torch.equal(a.o.weight[:, new_ch], o_parent * 0.5)
        assert torch.equal(a.o.weight[:, ch], o_parent * 0.5)
        for i in range(h):  # every old entry keeps its state exactly (halved o columns included)
            now = head_state(model, opt, path, i)
            for j, (u, v) in enumerate(zip(now, before[i], strict=True)):
                if not (i == head and j == 18):  # the parent's (halved) o columns themselves
                    assert torch.equal(u, v), (i, j)
    return check


@pytest.mark.parametrize("channels", [(), (8, 9, 10, 20)])
def test_clone_head_noise_zero_keeps_function(channels: tuple[int, ...]) -> None:
    model, opt, x = trained()
    if channels:
        prune_channels(model, opt, "blocks.0.attn", channels)  # head 1 keeps 5 channels, head 2 keeps 7
    out = logits(model, x)
    check = _clone_check(model, opt, "blocks.0.attn", 1)
    apply_plan(model, opt, CloneHead("blocks.0.attn", 1, 0.0), torch.Generator().manual_seed(0))
    check()
    torch.testing.assert_close(logits(model, x), out, atol=1e-5, rtol=0)
    assert model.head_counts() == {"blocks.0.attn": 5, "blocks.1.attn": 4}
    assert_consistent(model, opt)
    for _ in range(2):
        train_step(model, opt, x)
    a = model.blocks[0].attn
    assert torch.isfinite(logits(model, x)).all()
    # the copy learns on its own: its moments left 0 and it is no longer identical to the parent
    assert opt.state[a.q.weight]["exp_avg"][4 * HD:].abs().sum() > 0
    assert not torch.equal(a.q.weight[4 * HD:], a.q.weight[HD:2 * HD])


def test_clone_head_small_noise_small_change_and_deterministic() -> None:
    model, opt, x = trained()
    out = logits(model, x)
    twin = copy.deepcopy(model)
    apply_plan(model, opt, CloneHead("blocks.1.attn", 2, 1e-3), torch.Generator().manual_seed(5))
    a = model.blocks[1].attn
    new, parent = a.q.weight[4 * HD:], a.q.weight[2 * HD:3 * HD]
    assert not torch.equal(new, parent)
    assert (new - parent).abs().max() <= 1e-3 * 6 * parent.std(dim=1, correction=0).max()
    diff = (logits(model, x) - out).abs().max()
    assert 0 < diff < 1e-3 * out.abs().max()
    apply_plan(twin, None, CloneHead("blocks.1.attn", 2, 1e-3), torch.Generator().manual_seed(5))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters(), strict=True))


def test_clone_then_prune_the_original() -> None:
    model, opt, x = trained()
    prune_channels(model, opt, "blocks.0.attn", (3, 17))
    half = copy.deepcopy(model)  # the expected function: head 2's contribution halved
    a0 = half.blocks[0].attn
    with torch.no_grad():
        a0.o.weight[:, a0.v_head == 2] *= 0.5
    apply_plan(model, opt, CloneHead("blocks.0.attn", 2, 0.0), torch.Generator().manual_seed(0))
    apply_plan(model, opt, PruneHeads("blocks.0.attn", (2,)))
    a = model.blocks[0].attn
    assert a.n_head == 4 and a.v_head.tolist().count(3) == HD - 1  # the copy (7 channels) is now head 3
    torch.testing.assert_close(logits(model, x), logits(half, x), atol=1e-5, rtol=0)
    assert_consistent(model, opt)
    for _ in range(2):
        train_step(model, opt, x)
    assert torch.isfinite(logits(model, x)).all()


def test_rebuild_from_counts_round_trips() -> None:
    model, opt, x = trained()
    prune_channels(model, opt, "blocks.1.attn", (0, 5, 12))
    apply_plans(model, opt, [PruneHeads("blocks.0.attn", (0, 3)), CloneHead("blocks.1.attn", 0, 0.01),
                             CloneHead("blocks.0.attn", 1, 0.01)], torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.blocks[1].attn.head_gate[4] = 0.5  # a non-default gate must survive the round trip
    train_step(model, opt, x)
    units, heads = model.unit_counts(), model.head_counts()
    assert heads == {"blocks.0.attn": 3, "blocks.1.attn": 5}
    sd, osd = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    fresh = CharTransformer(VOCAB, LAYERS, HEADS, D, BLOCK)
    fresh.resize_to(units)
    fresh.resize_heads(heads)
    fresh.load_state_dict(sd)
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-2, weight_decay=0.1)
    opt2.load_state_dict(osd)
    assert fresh.head_counts() == heads and fresh.unit_counts() == units
    assert torch.equal(logits(fresh, x), logits(model, x))
    train_step(model, opt, x)
    train_step(fresh, opt2, x)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh.parameters(), strict=True))
    with pytest.raises(ValueError, match=r"'counts': \['blocks.7.attn'\]"):
        fresh.resize_heads({"blocks.7.attn": 2})
    with pytest.raises(ValueError, match=r"'n_head': 0"):
        fresh.resize_heads({"blocks.0.attn": 0})


def test_old_checkpoints_without_head_gate_load() -> None:
    model, _, x = trained()
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("head_gate")}
    fresh = CharTransformer(VOCAB, LAYERS, HEADS, D, BLOCK)
    with torch.no_grad():
        fresh.blocks[0].attn.head_gate.zero_()
    fresh.load_state_dict(sd)  # strict: the missing gate loads as ones
    assert torch.equal(fresh.blocks[0].attn.head_gate, torch.ones(HEADS))
    assert torch.equal(logits(fresh, x), logits(model, x))


def test_head_gate_scales_the_heads_output() -> None:
    model, _, x = trained()
    prune_channels(model, torch.optim.SGD(model.parameters(), lr=0.1), "blocks.1.attn", (1, 2, 26))
    scaled = copy.deepcopy(model)
    a, b = model.blocks[1].attn, scaled.blocks[1].attn
    with torch.no_grad():
        a.head_gate[3] = 0.3
        b.o.weight[:, b.v_head == 3] *= 0.3
    torch.testing.assert_close(logits(model, x), logits(scaled, x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "plan, match",
    [
        (PruneHeads("blocks.0.attn", (0, 1, 2, 3)), r"'heads'.*at most 3 of the 4 heads.*at least one head"),
        (PruneHeads("blocks.0.attn", (1, 4)), r"'heads': \[4\] .*0\.\.3"),
        (PruneHeads("blocks.9.attn", (1,)), r"'attn': 'blocks.9.attn' .*valid: \['blocks.0.attn', 'blocks.1.attn'\]"),
        (PruneHeads("blocks.0.attn.q", (1,)), r"'attn'.*CausalSelfAttention"),
        (CloneHead("blocks.1.attn", 4, 0.1), r"'head': 4 .*0\.\.3"),
        (CloneHead("blocks.1.mlp", 0, 0.1), r"'attn': 'blocks.1.mlp'"),
    ],
)
def test_rejected_plans_change_nothing(plan: object, match: str) -> None:
    model, opt, x = trained()
    before, out = snapshot(model, opt), logits(model, x)
    with pytest.raises(PlanError, match=match):
        apply_plan(model, opt, plan, torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    assert same(snapshot(model, opt), before) and torch.equal(logits(model, x), out)
    assert model.head_counts() == {"blocks.0.attn": 4, "blocks.1.attn": 4}
    assert_consistent(model, opt)


def test_unmappable_optimizer_state_is_rejected_first() -> None:
    model, opt, x = trained()
    opt.state[model.blocks[0].attn.o.weight]["odd"] = torch.zeros(3)
    before = snapshot(model, opt)
    with pytest.raises(PlanError, match=r"optimizer.state\[blocks.0.attn.o.weight\]\['odd'\]"):
        apply_plan(model, opt, CloneHead("blocks.0.attn", 0, 0.1), torch.Generator().manual_seed(0))
    assert same(snapshot(model, opt), before)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: PruneHeads("blocks.0.attn", ()), r"'heads'.*at least one"),
        (lambda: PruneHeads("blocks.0.attn", (1, 1)), r"'heads': \[1\] .*at most once"),
        (lambda: PruneHeads("blocks.0.attn", (-1,)), r"'heads': \[-1\] .*non-negative"),
        (lambda: PruneHeads(3, (0,)), r"'attn': 3 .*module path"),
        (lambda: CloneHead("blocks.0.attn", -1, 0.1), r"'head': -1 .*non-negative integer"),
        (lambda: CloneHead("blocks.0.attn", True, 0.1), r"'head': True"),
        (lambda: CloneHead("blocks.0.attn", 1.0, 0.1), r"'head': 1.0"),
        (lambda: CloneHead("blocks.0.attn", 0, -0.1), r"'noise': -0.1 .*>= 0"),
        (lambda: CloneHead("blocks.0.attn", 0, float("inf")), r"'noise'"),
    ],
)
def test_bad_plan_construction(build: Callable[[], object], match: str) -> None:
    with pytest.raises(PlanError, match=match):
        build()


def test_prune_plans_groups_per_layer() -> None:
    plans = prune_plans([("blocks.1.attn", 3), ("blocks.0.attn", 0), ("blocks.1.attn", 1)])
    assert plans == [PruneHeads("blocks.1.attn", (1, 3)), PruneHeads("blocks.0.attn", (0,))]
    assert prune_plans([]) == []

"""Head importance (Michel et al.), attention entropy and pruning orders."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from engine.errors import ParameterError
from engine.mechanisms.head_importance import (
    attention_entropy,
    entropy_order,
    head_importance,
    normalize_per_layer,
    prune_order,
    random_order,
)
from engine.mechanisms.head_plans import prune_plans
from engine.models.char_transformer import CharTransformer
from engine.mechanisms.plans import PruneUnits
from engine.surgery import apply_plan, apply_plans

VOCAB, LAYERS, HEADS, D, BLOCK = 13, 2, 4, 32, 8
HD = D // HEADS


def model_and_batches(dropout: float = 0.0, n: int = 3) -> tuple[CharTransformer, list[tuple[Tensor, Tensor]]]:
    """A float64 model after a few AdamW steps (in train mode) and ``n`` batches of (inputs, targets)."""
    torch.manual_seed(0)
    model = CharTransformer(VOCAB, LAYERS, HEADS, D, BLOCK, dropout=dropout,
                            generator=torch.Generator().manual_seed(0)).double()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(n):
        x = torch.randint(0, VOCAB, (3, BLOCK), generator=g)
        batches.append((x, torch.roll(x, 1, 1)))
    for x, y in batches * 2:
        opt.zero_grad()
        model.loss(x, y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model, batches


def sequences(batches: list[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """Every sequence of every batch as its own one-row batch ([1, T] inputs and targets)."""
    return [(x[i:i + 1], y[i:i + 1]) for x, y in batches for i in range(x.shape[0])]


def finite_difference(model: CharTransformer, batches: list[tuple[Tensor, Tensor]],
                      eps: float = 1e-5) -> dict[str, Tensor]:
    """Mean over sequences of |L_x(gate_h = g + eps) - L_x(gate_h = g - eps)| / 2 eps, per head, eval mode."""
    model.eval()
    out = {}
    seqs = sequences(batches)
    with torch.no_grad():
        for path, attn in model.attention_modules().items():
            vals = torch.zeros(attn.n_head, dtype=torch.float64)
            for h in range(attn.n_head):
                g = float(attn.head_gate[h])
                for x, y in seqs:
                    loss = []
                    for sign in (1, -1):
                        attn.head_gate[h] = g + sign * eps
                        loss.append(model.loss(x, y).item())
                    attn.head_gate[h] = g
                    vals[h] += abs(loss[0] - loss[1]) / (2 * eps)
            out[path] = vals / len(seqs)
    model.train()
    return out


def brute_force(model: CharTransformer, batches: list[tuple[Tensor, Tensor]],
                signed: bool = False) -> dict[str, Tensor]:
    """The definition, one backward per sequence: mean over sequences x of |dL_x/d head_gate| [n_head]
    (a leaf copy of the [n_head] gate, no per-sequence probe). ``signed``: without the abs."""
    model.eval()
    attn = model.attention_modules()
    saved = {p: a.head_gate for p, a in attn.items()}
    total = {p: torch.zeros(a.n_head, dtype=torch.float64) for p, a in attn.items()}
    seqs = sequences(batches)
    for x, y in seqs:
        leaves = {p: g.detach().clone().requires_grad_(True) for p, g in saved.items()}
        for p, a in attn.items():
            a.head_gate = leaves[p]
        grads = torch.autograd.grad(model.loss(x, y), list(leaves.values()))
        for p, g in zip(leaves, grads):
            total[p] += g.double() if signed else g.double().abs()
    for p, a in attn.items():
        a.head_gate = saved[p]
    model.train()
    return {p: t / len(seqs) for p, t in total.items()}


def test_importance_matches_finite_differences_and_touches_nothing() -> None:
    model, batches = model_and_batches(dropout=0.1)
    gates = {p: a.head_gate for p, a in model.attention_modules().items()}
    norm, raw = head_importance(model, batches)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())  # autograd.grad: no .grad written
    assert all(a.head_gate is gates[p] and not a.head_gate.requires_grad and a.head_probe is None
               for p, a in model.attention_modules().items())
    fd = finite_difference(model, batches)  # eval mode: dropout off, as in head_importance
    assert raw.keys() == fd.keys() == {"blocks.0.attn", "blocks.1.attn"}
    for path in raw:
        assert raw[path].shape == (HEADS,) and (raw[path] > 0).all()
        torch.testing.assert_close(raw[path].double(), fd[path], rtol=1e-4, atol=1e-7)
    for path in raw:
        torch.testing.assert_close(norm[path], raw[path] / raw[path].norm())
        assert math.isclose(float(norm[path].norm()), 1.0, rel_tol=1e-6)
    again = head_importance(model, batches).raw  # deterministic although dropout > 0
    assert all(torch.equal(again[p], raw[p]) for p in raw)


def test_abs_is_taken_per_sequence() -> None:
    model, batches = model_and_batches()
    raw = head_importance(model, batches).raw
    want = brute_force(model, batches)
    one_by_one = head_importance(model, sequences(batches)).raw  # batches of one sequence: the same
    per_batch = [head_importance(model, [b]).raw for b in batches]  # equal batch sizes: mean of batch means
    for path in raw:
        torch.testing.assert_close(raw[path].double(), want[path], rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(one_by_one[path], raw[path], rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(raw[path], sum(r[path] for r in per_batch) / len(batches))


def test_opposite_signs_do_not_cancel() -> None:
    """Two sequences whose gradients for a head nearly cancel: the batch-mean gradient is ~0
    (what a per-batch |dL/dxi| would score), the per-example importance is not."""
    model, _ = model_and_batches()
    g = torch.Generator().manual_seed(7)
    cands = []
    for _ in range(24):
        x = torch.randint(0, VOCAB, (1, BLOCK), generator=g)
        cands.append((x, torch.roll(x, 1, 1)))
    path, h = "blocks.1.attn", 0
    signed = [float(brute_force(model, [c], signed=True)[path][h]) for c in cands]
    i, j = min(((i, j) for i in range(len(cands)) for j in range(i) if signed[i] * signed[j] < 0),
               key=lambda ij: abs(signed[ij[0]] + signed[ij[1]]) / (abs(signed[ij[0]]) + abs(signed[ij[1]])))
    batch = (torch.cat([cands[i][0], cands[j][0]]), torch.cat([cands[i][1], cands[j][1]]))  # [2, T]
    model.eval()  # the per-batch score (the previous definition): |d batch-mean loss / d head_gate|
    a = model.blocks[1].attn
    saved, a.head_gate = a.head_gate, a.head_gate.detach().clone().requires_grad_(True)
    batch_grad, = torch.autograd.grad(model.loss(*batch), [a.head_gate])
    a.head_gate = saved
    model.train()
    per_example = float(head_importance(model, [batch]).raw[path][h])
    want = (abs(signed[i]) + abs(signed[j])) / 2
    assert math.isclose(per_example, want, rel_tol=1e-5)
    assert math.isclose(abs(float(batch_grad[h])), abs(signed[i] + signed[j]) / 2, rel_tol=1e-5, abs_tol=1e-12)
    assert abs(float(batch_grad[h])) < 0.2 * per_example  # the per-batch score nearly vanishes


def test_unequal_head_widths_and_a_gated_head() -> None:
    """Heads of unequal value width (padded layout) and a gate != 1: still the per-sequence derivative."""
    model, batches = model_and_batches()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    unit = next(u for u in model.unit_layers() if u.name == "blocks.0.attn")
    apply_plan(model, opt, PruneUnits(unit.layer, unit.next_layer, (1, 2, 3, 9, 30), unit.buffers))
    a = model.blocks[0].attn
    assert sorted(torch.bincount(a.v_head).tolist()) == [5, 7, 7, 8]  # head 0: 5 channels, 1 and 3: 7, 2: 8
    a.head_gate[2] = 0.5
    raw = head_importance(model, batches).raw
    want = brute_force(model, batches)
    fd = finite_difference(model, batches)
    for path in raw:
        torch.testing.assert_close(raw[path].double(), want[path], rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(raw[path].double(), fd[path], rtol=1e-4, atol=1e-7)
    assert torch.equal(a.head_gate, torch.tensor([1.0, 1.0, 0.5, 1.0], dtype=a.head_gate.dtype))


def test_head_with_zero_output_columns_scores_zero() -> None:
    model, batches = model_and_batches()
    a = model.blocks[1].attn
    with torch.no_grad():
        a.o.weight[:, a.v_head == 2] = 0.0
    result = head_importance(model, batches)
    raw = result.raw
    assert result.normalized["blocks.1.attn"][2] == 0.0
    assert raw["blocks.1.attn"][2] == 0.0 and (raw["blocks.1.attn"][[0, 1, 3]] > 0).all()
    zero = normalize_per_layer({"x": torch.zeros(3)})["x"]
    assert torch.equal(zero, torch.zeros(3))  # never NaN


def test_custom_loss_and_bad_batches() -> None:
    model, batches = model_and_batches()
    doubled = head_importance(model, batches, loss_fn=lambda m, x, y: 2 * m.loss(x, y)).raw
    raw = head_importance(model, batches).raw
    for path in raw:
        torch.testing.assert_close(doubled[path], 2 * raw[path])
    with pytest.raises(ParameterError, match="'batches'.*at least one"):
        head_importance(model, [])
    with pytest.raises(ParameterError, match="'batches'.*pairs"):
        head_importance(model, [batches[0][0]])
    with pytest.raises(ParameterError, match="'model'.*CausalSelfAttention"):
        head_importance(torch.nn.Linear(2, 2), batches)


def test_entropy_of_a_uniform_head_and_bounds() -> None:
    model, batches = model_and_batches(dropout=0.1)
    a = model.blocks[0].attn
    with torch.no_grad():  # q = k = 0 for head 1: every score 0, uniform over the t + 1 visible keys
        for lin in (a.q, a.k):
            lin.weight[HD:2 * HD] = 0.0
            lin.bias[HD:2 * HD] = 0.0
    ent = attention_entropy(model, batches)
    uniform = sum(math.log(t + 1) for t in range(BLOCK)) / BLOCK  # position 0 (entropy 0) included
    assert math.isclose(float(ent["blocks.0.attn"][1]), uniform, rel_tol=1e-6)
    for e in ent.values():
        assert e.shape == (HEADS,) and (e >= 0).all() and (e <= uniform + 1e-6).all()
    assert model.training and not a.record_entropy and a.last_entropy is None  # flags restored
    bare = attention_entropy(model, [x for x, _ in batches])
    assert all(torch.equal(bare[p], ent[p]) for p in ent)


def test_entropy_matches_explicit_attention() -> None:
    model, batches = model_and_batches()
    model.eval()
    x = batches[0][0]
    a = model.blocks[0].attn
    with torch.no_grad():
        h = model.blocks[0].ln_1(model.wte(x) + model.wpe(torch.arange(BLOCK)))
        q = a.q(h).view(3, BLOCK, HEADS, HD).transpose(1, 2)
        k = a.k(h).view(3, BLOCK, HEADS, HD).transpose(1, 2)
        att = (q @ k.transpose(-2, -1) / math.sqrt(HD)).masked_fill(
            torch.ones(BLOCK, BLOCK, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        want = -(att * att.clamp_min(1e-300).log()).sum(-1).mean((0, 2))
    torch.testing.assert_close(attention_entropy(model, [x])["blocks.0.attn"].double(), want, rtol=1e-5, atol=1e-6)


def test_prune_order_is_global_and_respects_min_heads() -> None:
    scores = {"blocks.0.attn": torch.tensor([0.1, 0.2, 0.05, 0.3]),
              "blocks.1.attn": torch.tensor([0.9, 0.15, 0.8, 0.7])}
    assert prune_order(scores, fraction=0.25) == [("blocks.0.attn", 2), ("blocks.0.attn", 0)]  # 2 of 8
    assert prune_order(scores, 2) == prune_order(scores, fraction=0.25)
    assert prune_order(scores, 1) == [("blocks.0.attn", 2)]
    assert prune_order(scores, fraction=0.5) == [("blocks.0.attn", 2), ("blocks.0.attn", 0), ("blocks.1.attn", 1),
                                                 ("blocks.0.attn", 1)]
    # at most 2 heads may go from layer 0: later candidates come from layer 1
    assert prune_order(scores, 4, min_heads_per_layer=2) == [
        ("blocks.0.attn", 2), ("blocks.0.attn", 0), ("blocks.1.attn", 1), ("blocks.1.attn", 3)]
    everything = prune_order(scores, fraction=1.0)
    assert len(everything) == 6 and {p for p, _ in everything} == set(scores)  # one head left per layer
    assert prune_order(scores, 100) == everything
    assert prune_order(scores, 0) == prune_order(scores, fraction=0.0) == []
    assert len(prune_order(scores, fraction=0.0625)) == 1  # 0.5 heads rounds up
    ties = {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([1.0, 1.0])}
    assert prune_order(ties, 2) == [("a", 0), ("b", 0)]


@pytest.mark.parametrize("kw, match", [
    (dict(fraction=1.5), "'fraction': 1.5"),
    (dict(count=0.5), r"'count': 0.5 .*whole number.*fraction="),  # a share passed as a count: loud
    (dict(count=-1), "'count': -1"),
    (dict(count=1, fraction=0.5), "exactly one of count"),
    (dict(), "exactly one of count"),
    (dict(fraction=0.1, min_heads_per_layer=0), "'min_heads_per_layer': 0"),
    (dict(fraction=0.1, scores={"a": torch.tensor([1.0, float("nan")])}), "'scores'.*finite"),
])
def test_prune_order_rejects_bad_arguments(kw: dict, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        prune_order(**{"scores": {"a": torch.ones(2)}, **kw})


def test_random_and_entropy_orders() -> None:
    counts = {"blocks.0.attn": 4, "blocks.1.attn": 2}
    a = random_order(counts, None, torch.Generator().manual_seed(3), min_heads_per_layer=1, fraction=0.5)
    b = random_order(counts, 3, torch.Generator().manual_seed(3), min_heads_per_layer=1)
    assert a == b and len(a) == 3 and sum(p == "blocks.1.attn" for p, _ in a) <= 1
    orders = {tuple(random_order(counts, 3, torch.Generator().manual_seed(s))) for s in range(10)}
    assert len(orders) > 1
    with pytest.raises(ParameterError, match="'heads'"):
        random_order({"x": 0}, 1, torch.Generator())
    ent = {"blocks.0.attn": torch.tensor([0.5, 1.9, 1.0, 0.2]), "blocks.1.attn": torch.tensor([1.5, 1.2])}
    assert entropy_order(ent, fraction=0.5) == [("blocks.0.attn", 1), ("blocks.1.attn", 0), ("blocks.0.attn", 2)]
    assert entropy_order(ent, 1) == [("blocks.0.attn", 1)]


def test_importance_order_to_plans_end_to_end() -> None:
    model, batches = model_and_batches()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scores, _ = head_importance(model, batches)
    order = prune_order(scores, 4, min_heads_per_layer=1)
    apply_plans(model, opt, prune_plans(order))
    assert sum(model.head_counts().values()) == 2 * HEADS - 4
    opt.zero_grad()
    model.loss(*batches[0]).backward()
    opt.step()
    again = head_importance(model, batches).normalized
    assert {p: len(s) for p, s in again.items()} == model.head_counts()

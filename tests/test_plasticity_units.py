"""Unit tests of the plasticity building blocks: rank measures, dormancy, CBP, ReDo, registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.diagnostics.rank import (approximate_rank, dead_fraction, dormant_fraction, effective_rank,
                                     layer_stats, redo_scores, singular_values, stable_rank)
from engine.errors import ConfigError
from engine.mechanisms.cbp import ContinualBackprop
from engine.mechanisms.plans import ReinitUnits
from engine.mechanisms.redo import ReDo, dormant_units
from engine.mechanisms.replacement import get_mechanism, mechanism_names
from engine.models.mlp import MLP
from engine.surgery import apply_plan


# -- rank measures on known spectra -------------------------------------------------
def test_identity_has_full_rank_by_every_measure() -> None:
    s = singular_values(torch.eye(6))
    assert torch.allclose(s, torch.ones(6, dtype=torch.float64))
    assert effective_rank(s) == pytest.approx(6.0)
    assert stable_rank(s) == pytest.approx(6.0)
    assert approximate_rank(s) == 6


def test_rank_one_matrix_has_rank_one() -> None:
    phi = torch.outer(torch.arange(1.0, 51.0), torch.tensor([1.0, -2.0, 0.5, 3.0]))  # [50, 4]
    st = layer_stats(phi, tau=0.1)
    assert st.effective_rank == pytest.approx(1.0, abs=1e-6)
    assert st.stable_rank == pytest.approx(1.0, abs=1e-6)
    assert st.approximate_rank == 1


def test_zero_features_give_zero_ranks_not_nan() -> None:
    st = layer_stats(torch.zeros(30, 8), tau=0.1)
    assert (st.effective_rank, st.stable_rank, st.approximate_rank) == (0.0, 0.0, 0)
    assert st.dead_ratio == 1.0 and st.dormant_ratio == 1.0
    assert not any(math.isnan(v) for v in (st.effective_rank, st.stable_rank))
    empty = singular_values(torch.zeros(0, 5))
    assert effective_rank(empty) == stable_rank(empty) == approximate_rank(empty) == 0


def test_known_spectrum_values() -> None:
    phi = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    s = singular_values(phi)
    assert torch.allclose(s, torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    p = np.array([3, 2, 1]) / 6
    assert effective_rank(s) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert stable_rank(s) == pytest.approx(14 / 9)
    assert approximate_rank(s) == 3          # 13/14 < 99%
    assert approximate_rank(s, 0.9) == 2     # 13/14 >= 90%
    # more samples than units, random rotation: same spectrum
    q, _ = torch.linalg.qr(torch.randn(40, 3, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(singular_values(q @ phi), s, atol=1e-5)


# -- dead / dormant ---------------------------------------------------------------------
def test_dead_and_dormant_fractions_on_constructed_activations() -> None:
    phi = torch.zeros(10, 4)
    phi[:, 0] = 1.0          # mean 1
    phi[:, 1] = 1.0          # mean 1
    phi[0, 2] = 0.5          # mean 0.05: alive but dormant
    # unit 3 is zero everywhere: dead (and dormant)
    scores = redo_scores(phi)  # layer mean = 2.05 / 4
    assert torch.allclose(scores, torch.tensor([1, 1, 0.05, 0]) / (2.05 / 4))
    assert dead_fraction(phi) == 0.25
    assert dormant_fraction(phi, 0.1) == 0.5   # units 2 (score ~0.098) and 3
    assert dormant_fraction(phi, 0.025) == 0.25
    assert dormant_units(phi, 0.1) == [2, 3]
    assert dormant_units(phi, 0.025) == [3]


# -- continual backprop ----------------------------------------------------------------
def _mlp(seed: int = 0) -> MLP:
    return MLP(5, 6, 2, 3, "kaiming", torch.Generator().manual_seed(seed))


def test_cbp_utility_update_and_maturity() -> None:
    model = _mlp()
    cbp = ContinualBackprop(model, model.hidden_pairs(), rate=0.0, maturity=3, decay=0.9)
    x = torch.rand(4, 5, generator=torch.Generator().manual_seed(1))
    _, hidden = model(x, hidden=True)
    cbp.observe(0, hidden)
    for i, h in enumerate(hidden):
        out_mag = model.next_linear(i).weight.abs().sum(0)
        expect = 0.1 * h.detach().abs().mean(0) * out_mag
        assert torch.allclose(cbp.util[i], expect)
        assert torch.allclose(cbp.mean_act[i], 0.1 * h.detach().mean(0))
    cbp.observe(1, hidden)
    for i, h in enumerate(hidden):
        inst = h.detach().abs().mean(0) * model.next_linear(i).weight.abs().sum(0)
        assert torch.allclose(cbp.util[i], 0.9 * 0.1 * inst + 0.1 * inst)
        # bias correction recovers the instantaneous utility of a constant input
        assert torch.allclose(cbp.bias_corrected_utility()[i], inst, atol=1e-6)
    assert all(int(a.min()) == 2 for a in cbp.age)
    cbp.rate = 1.0  # would replace every mature unit at once, but none is mature yet (age 2 <= 3)
    assert cbp.plans(1) == []
    cbp.observe(2, hidden)
    cbp.observe(3, hidden)  # age 4 > maturity 3
    plans = cbp.plans(3)
    assert [len(p.indices) for p in plans] == [6, 6]


def _cbp_with(utility: list[float], age: list[int], rate: float, maturity: int,
              decay: float = 0.99) -> tuple[ContinualBackprop, list[float]]:
    """CBP on the first hidden layer (6 units) of :func:`_mlp` with the given raw
    utilities and ages; also returns the bias-corrected utilities it ranks by."""
    model = _mlp()
    cbp = ContinualBackprop(model, model.hidden_pairs()[:1], rate=rate, maturity=maturity, decay=decay)
    cbp.util[0] = torch.tensor(utility)
    cbp.age[0] = torch.tensor(age)
    corrected = [u / (1 - decay ** a) for u, a in zip(utility, age)]
    return cbp, corrected


def test_cbp_replaces_exactly_the_lowest_utility_mature_units() -> None:
    # Distinct utilities; unit 4 has the lowest of all but is not mature yet.
    utility = [0.7, 0.2, 0.9, 0.4, 0.05, 0.6]
    age = [50, 50, 50, 50, 5, 50]  # equal ages of the mature ones: the same bias correction
    cbp, _ = _cbp_with(utility, age, rate=0.5, maturity=10)
    plans = cbp.plans(0)  # 5 mature units x 0.5: the counter reaches 2.5, two are replaced
    assert len(plans) == 1 and sorted(plans[0].indices) == [1, 3]  # utilities 0.2 and 0.4
    assert cbp.counter[0] == pytest.approx(0.5) and cbp.replaced_total == [2]
    # The replaced units restart; every other unit (the highest-utility ones and
    # the immature one) keeps its utility and age.
    assert cbp.util[0].tolist() == pytest.approx([0.7, 0.0, 0.9, 0.0, 0.05, 0.6])
    assert cbp.age[0].tolist() == [50, 0, 50, 0, 5, 50]


def test_cbp_ranks_by_bias_corrected_utility() -> None:
    # Raw utility ranks unit 0 lowest, but it is young: 0.09 / (1 - 0.9) = 0.9.
    # Unit 1's 0.5 over 100 steps is barely corrected: it is the least useful.
    cbp, corrected = _cbp_with([0.09, 0.5, 1.0, 1.0, 1.0, 1.0], [1, 100, 100, 100, 100, 100],
                               rate=1 / 6, maturity=0, decay=0.9)
    assert corrected[0] == pytest.approx(0.9) and min(corrected) == corrected[1]
    (plan,) = cbp.plans(0)
    assert plan.indices == (1,)


def test_cbp_fractional_counter_schedule() -> None:
    model = _mlp()
    cbp = ContinualBackprop(model, model.hidden_pairs()[:1], rate=0.05, maturity=0, decay=0.99)
    x = torch.rand(8, 5, generator=torch.Generator().manual_seed(2))
    _, hidden = model(x, hidden=True)
    counts = []
    for step in range(10):
        cbp.observe(step, hidden[:1])
        score = cbp.bias_corrected_utility()[0].clone()  # before plans() resets the replaced units
        lowest = float(score[cbp.age[0] > cbp.maturity].min())
        plans = cbp.plans(step)
        counts.append(sum(len(p.indices) for p in plans))
        for plan in plans:  # by value: two dead units tie at utility 0 here
            assert [float(score[i]) for i in plan.indices] == [lowest], (score, plan.indices)
    # 6 mature units x 0.05 = 0.3 per step: the counter crosses 1 after steps 4 and 7
    assert counts == [0, 0, 0, 1, 0, 0, 1, 0, 0, 1], counts
    assert cbp.replaced_total == [3]
    assert 0 <= cbp.counter[0] < 1


def test_cbp_replacement_leaves_the_output_unchanged() -> None:
    model = _mlp(3)
    cbp = ContinualBackprop(model, model.hidden_pairs(), rate=0.2, maturity=5, decay=0.99)
    x = torch.rand(1, 5, generator=torch.Generator().manual_seed(4)) + 0.5
    gen = torch.Generator().manual_seed(5)
    replaced = 0
    for step in range(30):  # constant input: each unit's activation equals its (bias-corrected) mean
        with torch.no_grad():
            before = model(x)
        _, hidden = model(x, hidden=True)
        cbp.observe(step, hidden)
        for plan in cbp.plans(step):
            assert plan.zero_outgoing and plan.fold_bias is not None
            apply_plan(model, None, plan, gen)
            nxt = model.get_submodule(plan.next_layer)
            assert torch.all(nxt.weight[:, list(plan.indices)] == 0)
            replaced += len(plan.indices)
        with torch.no_grad():
            assert torch.allclose(model(x), before, atol=1e-5), step
    assert replaced > 0
    assert sum(cbp.replaced_total) == replaced


@pytest.mark.parametrize("opt_name", ["adam", "sgd_momentum"])
def test_replacement_resets_moments_of_replaced_units_only(opt_name: str) -> None:
    model = _mlp(6)
    params = list(model.parameters())
    opt = (torch.optim.Adam(params, lr=1e-2) if opt_name == "adam"
           else torch.optim.SGD(params, lr=1e-2, momentum=0.9))
    x = torch.rand(16, 5, generator=torch.Generator().manual_seed(7))
    y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(8))
    cbp = ContinualBackprop(model, model.hidden_pairs(), rate=0.0, maturity=0)
    for step in range(5):
        out, hidden = model(x, hidden=True)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(out, y).backward()
        opt.step()
        cbp.observe(step, hidden)
    cbp.rate = 2.0 / 6  # two units of each layer
    plans = cbp.plans(5)
    assert [len(p.indices) for p in plans] == [2, 2]
    keys = ("exp_avg", "exp_avg_sq") if opt_name == "adam" else ("momentum_buffer",)
    lin, nxt = model.layers[0], model.layers[1]
    before = {k: (opt.state[lin.weight][k].clone(), opt.state[nxt.weight][k].clone()) for k in keys}
    apply_plan(model, opt, plans[0], torch.Generator().manual_seed(9))
    idx = list(plans[0].indices)
    keep = [i for i in range(6) if i not in idx]
    for k in keys:
        w_in, w_out = opt.state[lin.weight][k], opt.state[nxt.weight][k]
        assert torch.all(w_in[idx] == 0) and torch.all(w_out[:, idx] == 0)
        assert torch.all(opt.state[lin.bias][k][idx] == 0)
        assert torch.equal(w_in[keep], before[k][0][keep])
        assert torch.equal(w_out[:, keep], before[k][1][:, keep])
        assert before[k][0][idx].abs().sum() > 0  # there was something to reset


def test_cbp_adaptable_contribution_divides_by_input_magnitude() -> None:
    model = _mlp()
    cbp = ContinualBackprop(model, model.hidden_pairs(), decay=0.5, utility="adaptable_contribution")
    x = torch.rand(4, 5, generator=torch.Generator().manual_seed(1))
    _, hidden = model(x, hidden=True)
    cbp.observe(0, hidden)
    h = hidden[0].detach()
    a_hat = h.mean(0)  # bias-corrected after one step
    expect = 0.5 * (h - a_hat).abs().mean(0) * model.layers[1].weight.abs().sum(0) / model.layers[0].weight.abs().sum(1)
    assert torch.allclose(cbp.util[0], expect, atol=1e-7)


def test_cbp_state_round_trip() -> None:
    model = _mlp()
    a = ContinualBackprop(model, model.hidden_pairs(), rate=0.1, maturity=1)
    _, hidden = model(torch.rand(4, 5), hidden=True)
    for s in range(3):
        a.observe(s, hidden)
        a.plans(s)
    assert sum(a.replaced_total) > 0 and all(int(t.max()) > 0 for t in a.age)  # unlike a fresh one's
    b = ContinualBackprop(model, model.hidden_pairs(), rate=0.1, maturity=1)
    b.load_state_dict(a.state_dict())
    assert b.counter == a.counter and b.replaced_total == a.replaced_total
    for name in ("util", "mean_act", "age"):
        assert all(torch.equal(u, v) for u, v in zip(getattr(a, name), getattr(b, name))), name


# -- ReDo ---------------------------------------------------------------------------------
def test_redo_reinitialises_dormant_units_every_f_steps() -> None:
    model = _mlp()
    with torch.no_grad():
        model.layers[0].weight[2].fill_(-1.0)  # unit 2 of layer 0 never fires on inputs >= 0
        model.layers[0].bias[2] = -1.0
    redo = ReDo(model, model.hidden_pairs(), tau=0.1, every=4)
    x = torch.rand(32, 5, generator=torch.Generator().manual_seed(3))
    probe = lambda: model(x, hidden=True)[1]  # noqa: E731
    assert [redo.plans(s, probe) for s in range(3)] == [[], [], []]
    plans = redo.plans(3, probe)
    first = [p for p in plans if p.layer == "layers.0"]
    assert len(first) == 1 and 2 in first[0].indices
    assert first[0].zero_outgoing and first[0].fold_bias is None
    scores = redo_scores(probe()[0])
    assert set(first[0].indices) == {int(i) for i in (scores <= 0.1).nonzero().flatten()}
    apply_plan(model, None, first[0], torch.Generator().manual_seed(0))
    assert torch.all(model.layers[1].weight[:, 2] == 0)  # outgoing zeroed
    assert model.layers[0].bias[2] == 0
    assert model.layers[0].weight[2].abs().max() < 1.0  # re-drawn from kaiming U(+-1/sqrt(5))
    assert redo.replaced_total[0] == len(first[0].indices)


def test_mechanism_registry() -> None:
    assert mechanism_names() == ["cbp", "redo"]
    assert get_mechanism("cbp") is ContinualBackprop
    with pytest.raises(ConfigError) as err:
        get_mechanism("dropout")
    assert "cbp" in str(err.value) and "redo" in str(err.value)


def test_plan_type() -> None:
    model = _mlp()
    cbp = ContinualBackprop(model, model.hidden_pairs(), rate=1.0, maturity=0)
    _, hidden = model(torch.rand(2, 5), hidden=True)
    cbp.observe(0, hidden)
    plans = cbp.plans(0)
    assert plans and all(isinstance(p, ReinitUnits) for p in plans)


def test_cbp_host_side_mature_count_tracks_the_age_tensor() -> None:
    # The count of mature units is kept on the host (no sync per step); it must equal
    # the tensor's count through ticks, replacements and a state load.
    model = _mlp()
    cbp = ContinualBackprop(model, model.hidden_pairs(), rate=0.15, maturity=3, decay=0.9)
    gen = torch.Generator().manual_seed(11)
    replaced = 0
    for step in range(40):
        _, hidden = model(torch.rand(4, 5, generator=gen), hidden=True)
        cbp.observe(step, hidden)
        replaced += sum(len(p.indices) for p in cbp.plans(step))
        for i, age in enumerate(cbp.age):
            assert cbp._young[i].source is age  # the host count was not rebuilt from the tensor
            assert age.numel() - cbp._young[i].young == int((age > 3).sum()), (step, i)
        if step == 20:  # a load swaps the tensors: the count is rebuilt once
            cbp.load_state_dict(cbp.state_dict())
            assert all(y.source is None for y in cbp._young)
            cbp.plans(step)  # rebuilds (and may replace)
    assert replaced > 10

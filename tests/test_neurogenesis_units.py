"""Neurogenesis building blocks: thresholds, outlier gating, replay statistics, autoencoder surgery."""

from __future__ import annotations

import pytest
import torch

from engine.config import build_config
from engine.errors import ConfigError
from engine.experiments._ndl_stage import make_optimizer, plasticity_scales, scaled_step, stack_loss
from engine.mechanisms.neurogenesis import (GrowthGate, ThresholdStore, growth_plans, level_thresholds,
                                            outlier_fraction)
from engine.mechanisms.replay import ClassGaussians
from engine.models.autoencoder import StackedAutoencoder, per_sample_error
from engine.surgery import apply_plan


def test_thresholds_are_the_percentile_of_each_levels_errors() -> None:
    e1 = torch.arange(1, 101, dtype=torch.float32)  # 1..100
    e2 = torch.full((50,), 0.25)
    th = level_thresholds([e1, e2], 90.0)
    assert th[0] == pytest.approx(float(torch.quantile(e1.double(), 0.9)))
    assert 90 < th[0] < 91 and th[1] == pytest.approx(0.25)
    store = ThresholdStore()
    assert not store.ready
    store.measure([e1, e2], 50.0)
    assert store.ready and store.thresholds[0] == pytest.approx(50.5)
    assert store.base_errors[1]["mean"] == pytest.approx(0.25) and store.samples == 100
    again = ThresholdStore()
    again.load_state_dict(store.state_dict())
    assert again.state_dict() == store.state_dict()
    with pytest.raises(ValueError):
        level_thresholds([e1], 0.0)
    with pytest.raises(ValueError):
        level_thresholds([torch.zeros(0)], 50.0)


def test_outlier_gating_compares_proportions_and_respects_the_cap() -> None:
    # Same proportion, very different counts: the same decision.
    small = torch.tensor([0.0] * 7 + [1.0] * 3)           # 30% outliers of 10
    large = torch.tensor([0.0] * 700 + [1.0] * 300)       # 30% outliers of 1000
    assert outlier_fraction(small, 0.5) == pytest.approx(0.3) == outlier_fraction(large, 0.5)
    assert outlier_fraction(torch.tensor([0.5, 0.6]), 0.5) == 0.5  # strictly above the threshold
    assert outlier_fraction(torch.zeros(0), 0.5) == 0.0
    gate = GrowthGate(max_fraction=0.25, units_per_step=4, cap=10)
    assert gate.units_to_add(0.3, 0) == 4
    assert gate.units_to_add(0.25, 0) == 0  # at the limit: no growth
    assert gate.units_to_add(0.3, 8) == 2   # clipped to what the cap leaves
    assert gate.units_to_add(0.9, 10) == 0  # cap reached
    assert GrowthGate(0.25, 4, 0).units_to_add(1.0, 0) == 0
    with pytest.raises(ValueError):
        GrowthGate(1.0, 1, 1)


def test_replay_sampling_reproduces_a_known_gaussian() -> None:
    gen = torch.Generator().manual_seed(0)
    mu = torch.tensor([1.0, -2.0, 0.5])
    a = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [-0.3, 0.2, 0.5]])
    cov = a @ a.T
    data = mu + torch.randn(20000, 3, generator=gen) @ a.T
    stats = ClassGaussians(shrinkage=0.0)
    stats.fit(4, data)
    assert torch.allclose(stats.mean[4], mu, atol=0.03)
    assert torch.allclose(stats.covariance(4), cov, atol=0.03)
    s = stats.sample(4, 20000, gen)
    assert torch.allclose(s.mean(0), mu, atol=0.04)
    assert torch.allclose(torch.cov(s.T), cov, atol=0.05)
    # Shrinkage pulls towards tr/d * I; state round trip keeps the same draws.
    shrunk = ClassGaussians(shrinkage=1.0)
    shrunk.fit(4, data)
    assert torch.allclose(shrunk.covariance(4), torch.eye(3) * torch.trace(cov) / 3, atol=0.05)
    copy = ClassGaussians()
    copy.load_state_dict(stats.state_dict())
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(stats.sample(4, 8, g1), copy.sample(4, 8, g2))


@pytest.mark.parametrize("codes", [torch.ones(10, 4), torch.ones(1, 4) * 3,
                                   torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])])
def test_singular_covariance_does_not_crash(codes: torch.Tensor) -> None:
    stats = ClassGaussians(shrinkage=0.0, min_eig=1e-5)
    stats.fit(0, codes)  # identical rows, one row, perfectly correlated columns
    s = stats.sample(0, 100, torch.Generator().manual_seed(0))
    assert torch.isfinite(s).all() and s.shape == (100, codes.shape[1])
    assert torch.allclose(s.mean(0), codes.mean(0), atol=0.05)
    assert float(torch.linalg.eigvalsh(stats.covariance(0).double()).min()) > 0


@pytest.mark.parametrize("level", [1, 2, 3])
def test_growth_keeps_encoder_and_mirrored_decoder_consistent(level: int) -> None:
    torch.manual_seed(0)
    model = StackedAutoencoder(12, [10, 6, 4])
    opt = make_optimizer(model, "adam", 1e-2, 0.9)
    x = torch.rand(32, 12)
    for _ in range(3):  # optimizer state exists before growth
        opt.zero_grad()
        stack_loss(model, x).backward()
        opt.step()
    before = [model.reconstruct(x, lv).detach().clone() for lv in (1, 2, 3)]
    old_param_count = sum(p.numel() for p in model.parameters())
    plans = growth_plans(model.level_paths(level), 3, "kaiming")
    for plan in plans:
        apply_plan(model, opt, plan, torch.Generator().manual_seed(1))
    sizes = model.sizes()
    assert sizes[level - 1] == [10, 6, 4][level - 1] + 3
    dims = [12, *sizes]
    for i in range(3):  # every Linear chains: encoder i: dims[i]->dims[i+1], decoder i mirrors it
        assert (model.encoder[i].in_features, model.encoder[i].out_features) == (dims[i], dims[i + 1])
        assert (model.decoder[i].in_features, model.decoder[i].out_features) == (dims[i + 1], dims[i])
        assert model.decoder[i].weight.shape == (dims[i], dims[i + 1])
    # The function of the old units is unchanged at growth, through every depth.
    for lv, b in zip((1, 2, 3), before):
        assert torch.allclose(model.reconstruct(x, lv), b, atol=1e-6), lv
    # Optimizer state grew with the parameters (zeros for new entries) and still steps.
    for p in model.parameters():
        assert opt.state[p]["exp_avg"].shape == p.shape
    enc = model.encoder[level - 1]
    assert torch.count_nonzero(opt.state[enc.weight]["exp_avg"][-3:]) == 0
    assert sum(p.numel() for p in model.parameters()) > old_param_count
    opt.zero_grad()
    stack_loss(model, x).backward()
    opt.step()
    assert torch.isfinite(model(x)).all()


def test_plasticity_step_freezes_old_encoder_and_slows_the_decoder() -> None:
    torch.manual_seed(0)
    model = StackedAutoencoder(8, [6, 3])
    opt = make_optimizer(model, "adam", 1e-2, 0.9)
    for plan in growth_plans(model.level_paths(1), 2):
        apply_plan(model, opt, plan, torch.Generator().manual_seed(0))
    enc, dec = model.encoder[0], model.decoder[0]
    with torch.no_grad():  # give the new units' decoder columns a gradient path
        dec.weight[:, -2:] = 0.1
    w_enc, w_dec = enc.weight.detach().clone(), dec.weight.detach().clone()
    x = torch.rand(16, 8)
    _, recon = model.level_forward(x, 1)
    ((recon - x) ** 2).mean().backward()
    scaled_step(opt, plasticity_scales(model, 1, [2, 0], slow=0.01, new_decoder=1.0))
    d_enc, d_dec = enc.weight.detach() - w_enc, dec.weight.detach() - w_dec
    # Adam's first step moves every weight with a gradient by about its learning
    # rate, so each group's step size tells which rate it got.
    assert torch.count_nonzero(d_enc[:-2]) == 0                       # old encoder rows frozen
    assert d_enc[-2:].abs().min() > 0.5e-2                            # new rows: the full LR
    assert 0.5 * 0.01 * 1e-2 < d_dec[:, :-2].abs().min()              # old decoder: slowed, not frozen...
    assert d_dec[:, :-2].abs().max() <= 0.01 * 1e-2 * 1.01            # ...to LR/100
    assert d_dec[:, -2:].abs().min() > 0.5e-2                         # new decoder columns: the full LR


def test_autoencoder_levels_and_per_sample_error() -> None:
    model = StackedAutoencoder(5, [4, 3, 2])
    assert model.level_paths(3) == [("encoder.2", "decoder.2")]
    assert model.level_paths(1) == [("encoder.0", "encoder.1"), ("decoder.1", "decoder.0")]
    x = torch.rand(7, 5)
    assert model.reconstruct(x).shape == (7, 5) and model.code(x).shape == (7, 2)
    err = per_sample_error(model, x, 2)
    assert err.shape == (7,)
    assert torch.allclose(err, ((model.reconstruct(x, 2) - x) ** 2).mean(1))
    with pytest.raises(ValueError):
        model.level_paths(4)


@pytest.mark.parametrize(("flat", "key"), [
    ({"class_order": "0,1,2"}, "class_order"),       # overlaps the base {1,7}
    ({"base_classes": "a"}, "base_classes"),
    ({"class_order": "0,0"}, "class_order"),
    ({"hidden_sizes": "8,0"}, "hidden_sizes"),
])
def test_bad_class_settings_are_config_errors(flat: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"experiment": "neurogenesis", **flat})
    assert info.value.key == key


def test_order_seed_permutes_deterministically() -> None:
    fam = build_config({"experiment": "neurogenesis"}).family
    assert fam.order() == [0, 2, 3, 4, 5, 6, 8, 9]
    a = build_config({"experiment": "neurogenesis", "order_seed": 3}).family.order()
    b = build_config({"experiment": "neurogenesis", "order_seed": 3}).family.order()
    c = build_config({"experiment": "neurogenesis", "order_seed": 4}).family.order()
    assert a == b and sorted(a) == fam.order() and a != c
    with pytest.raises(ConfigError):
        fam.check_data_classes([0, 1, 2])


def test_order_sweep_gives_distinct_orders() -> None:
    from pathlib import Path

    from engine.sweep.grid import load_sweep_files, resolve_trials

    root = Path(__file__).resolve().parent.parent
    [(name, mapping)] = load_sweep_files(root / "sweeps" / "ndl_orders.yaml")
    trials = resolve_trials({}, mapping)
    orders = [tuple(t.config.family.order()) for t in trials]
    assert name == "ndl_orders" and len(orders) == 5 == len(set(orders))
    assert all(t.config.experiment == "neurogenesis" for t in trials)

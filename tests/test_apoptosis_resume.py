"""Exact resume: a mechanism restored from its state_dict makes the same plans as the original."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from _apoptosis import Run, check_lineage, config
from engine.errors import ParameterError
from engine.mechanisms.apoptosis import Apoptosis


def save_load(obj: object) -> object:
    """Through torch.save / torch.load(weights_only=True), as a checkpoint would go."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("strategy", ["standard", "functional", "fade", "growth_only", "hybrid"])
def test_round_trip_gives_identical_subsequent_plans(strategy: str) -> None:
    cfg = config(apoptosis_strategy=strategy, layer_pattern="ffn_and_attention", fade_steps=6)
    a = Run(cfg)
    a.train(43)  # inside the fades begun at step 40 (they end at 46)
    if strategy in ("fade", "hybrid"):
        assert any(s["fading"] for s in a.mech.summaries().values())
    snap = save_load({"model": a.model.state_dict(), "counts": a.model.unit_counts(), "opt": a.opt.state_dict(),
                      "mech": a.mech.state_dict(), "data": a.data.get_state(), "step": a.step_no})
    assert isinstance(snap, dict)
    a.train(30)

    b = Run(cfg, seed=7)  # different init and generators: everything must come from the snapshot
    b.model.resize_to(snap["counts"])
    b.model.load_state_dict(snap["model"])
    b.opt = torch.optim.AdamW(b.model.parameters(), lr=3e-3, weight_decay=0.01)
    b.opt.load_state_dict(snap["opt"])
    b.mech = Apoptosis(b.model, cfg, b.gen)
    b.mech.load_state_dict(copy.deepcopy(snap["mech"]))
    b.data.set_state(snap["data"])
    b.step_no = snap["step"]
    b.train(30)

    after = [(s, p) for s, p in a.plans if s >= 43]
    assert after and after == b.plans
    assert a.records[-len(b.records):] == b.records
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True))
    assert a.mech.lineage() == b.mech.lineage()
    assert a.mech.summaries() == b.mech.summaries()
    check_lineage(b)


def test_load_rejects_state_of_another_model() -> None:
    a = Run(config(apoptosis_strategy="standard"))
    a.train(25)
    b = Run(config(apoptosis_strategy="standard"), n_layer=1)
    with pytest.raises(ParameterError, match="unit groups"):
        b.mech.load_state_dict(a.mech.state_dict())
    c = Run(config(apoptosis_strategy="growth_only"))
    c.train(25)  # grew: the fresh model of ``a`` has fewer units than c's state
    with pytest.raises(ValueError, match="resize the model"):
        Run(config()).mech.load_state_dict(c.mech.state_dict())

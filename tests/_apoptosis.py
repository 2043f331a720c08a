"""Shared helpers of the apoptosis mechanism tests: a tiny char transformer trained on random tokens."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from engine.mechanisms.apoptosis import Apoptosis, ApoptosisConfig, ApoptosisRecord
from engine.mechanisms.plans import CloneUnits, Plan, PruneUnits
from engine.models.char_transformer import CharTransformer
from engine.surgery import apply_plan

VOCAB, LAYERS, HEADS, D, BLOCK = 11, 2, 2, 16, 8

#: Fast settings: act every 10 steps from step 20 on, mature after 10 steps.
FAST = dict(prune_rate=0.2, prune_interval=10, apoptosis_start=20, maturity_steps=10, fade_steps=4,
            growth_rate=0.2, growth_interval=10, min_unit_fraction=0.5, max_unit_factor=2.0, probe_batch=4)


def config(**kw: Any) -> ApoptosisConfig:
    """An :class:`ApoptosisConfig` with :data:`FAST` settings, overridden by ``kw``."""
    return ApoptosisConfig(**{**FAST, **kw})


class Run:
    """A tiny CharTransformer, AdamW and the mechanism, trained step by step on random tokens."""

    def __init__(self, cfg: ApoptosisConfig, seed: int = 0, n_layer: int = LAYERS) -> None:
        torch.set_num_threads(1)
        self.model = CharTransformer(VOCAB, n_layer, HEADS, D, BLOCK, generator=torch.Generator().manual_seed(seed))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=3e-3, weight_decay=0.01)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.data = torch.Generator().manual_seed(seed + 2)
        self.cfg = cfg
        self.mech = Apoptosis(self.model, cfg, self.gen)
        self.n0 = self.model.unit_counts()
        self.step_no = 0
        self.records: list[ApoptosisRecord] = []
        self.plans: list[tuple[int, Plan]] = []
        self.losses: list[float] = []
        self.probe = torch.randint(0, VOCAB, (4, BLOCK), generator=torch.Generator().manual_seed(99))

    def batch(self) -> tuple[Tensor, Tensor]:
        x = torch.randint(0, VOCAB, (4, BLOCK), generator=self.data)
        return x, torch.roll(x, 1, 1)  # a learnable rule: predict the previous token

    def train(self, steps: int, check: bool = True) -> None:
        """``steps`` training steps, applying every plan; with ``check`` also verifying the state mapping."""
        for _ in range(steps):
            step = self.step_no
            x, y = self.batch()
            self.model.set_recording(self.mech.wants_activity(step))
            loss = self.model.loss(x, y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.losses.append(loss.item())
            ids = self.mech.alive_ids()  # the model's order until the plans are applied
            plans = self.mech.step(step, lambda: (self.probe, self.probe))
            before = unit_state(self, ids) if check and plans else None
            for plan in plans:
                if check and isinstance(plan, CloneUnits) and plan.layer.endswith("attn.v"):
                    check_clone_heads(self, plan)
                apply_plan(self.model, self.opt, plan, self.gen)
                self.plans.append((step, plan))
            if before is not None:
                check_state_kept(self, before)
            self.records += self.mech.records()
            self.step_no += 1

    def alive(self) -> dict[str, int]:
        return {n: s["alive"] for n, s in self.mech.summaries().items()}


def unit_state(run: Run, ids: dict[str, list[int]] | None = None) -> dict[str, dict[int, list[Tensor]]]:
    """Per group: unit id -> [weight row, bias, outgoing column, and their exp_avg / exp_avg_sq]."""
    out: dict[str, dict[int, list[Tensor]]] = {}
    for u in run.model.unit_layers():
        lin, nxt = run.model.get_submodule(u.layer), run.model.get_submodule(u.next_layer)
        ts = [lin.weight, lin.bias, nxt.weight.T]
        st = [run.opt.state[p][k] for p in (lin.weight, lin.bias) for k in ("exp_avg", "exp_avg_sq")]
        st += [run.opt.state[nxt.weight][k].T for k in ("exp_avg", "exp_avg_sq")]
        order = run.mech.groups[u.name].ids if ids is None else ids[u.name]
        out[u.name] = {i: [t[p].detach().clone() for t in ts + st] for p, i in enumerate(order)}
    return out


def check_state_kept(run: Run, before: dict[str, dict[int, list[Tensor]]]) -> None:
    """Units alive before and after keep weights and moments exactly; new units have zero moments."""
    after = unit_state(run)
    for name, units in after.items():
        for uid, vals in units.items():
            if uid in before[name]:
                assert all(torch.equal(a, b) for a, b in zip(vals, before[name][uid])), (name, uid)
            else:
                assert all(not v.any() for v in vals[3:]), (name, uid)  # optimizer moments
                assert not vals[2].any(), (name, uid)  # outgoing column


def check_clone_heads(run: Run, plan: CloneUnits) -> None:
    """Attention children go to their parent's head at fresh slots above the head's highest."""
    attn = run.model.get_submodule(plan.layer.rpartition(".")[0])
    heads, slots = attn.v_head.tolist(), attn.v_slot.tolist()
    names = [b.rpartition(".")[2] for b in plan.buffers]
    vals = dict(zip(names, plan.buffer_values))
    assert list(vals["v_head"]) == [heads[p] for p in plan.parents]
    for h in set(vals["v_head"]):
        new = [s for hh, s in zip(vals["v_head"], vals["v_slot"]) if hh == h]
        top = max(s for hh, s in zip(heads, slots) if hh == h)
        assert sorted(new) == list(range(top + 1, top + 1 + len(new)))


def check_lineage(run: Run) -> None:
    """Ids match the model, alive records are exactly the alive units, parents and generations agree."""
    lineage = run.mech.lineage()
    for u in run.model.unit_layers():
        g = run.mech.groups[u.name]
        assert len(g.ids) == len(set(g.ids)) == run.model.get_submodule(u.layer).out_features
        recs = {r["unit_id"]: r for r in lineage if r["group"] == u.name}
        assert sorted(recs) == list(range(len(recs)))
        assert {i for i, r in recs.items() if r["death_step"] < 0} == set(g.ids)
        for r in recs.values():
            if r["parent_id"] < 0:
                assert r["generation"] == 0 and r["birth_step"] == 0
            else:
                parent = recs[r["parent_id"]]
                assert r["generation"] == parent["generation"] + 1
                assert parent["birth_step"] <= r["birth_step"]
                assert parent["death_step"] < 0 or parent["death_step"] >= r["birth_step"]
            if r["death_step"] >= 0:
                assert r["cause"] and (r["cause"] == "drill" or r["death_step"] - r["birth_step"] >= run.cfg.maturity_steps)
        if u.kind == "attn":
            attn = run.model.get_submodule(u.name)
            pairs = list(zip(attn.v_head.tolist(), attn.v_slot.tolist()))
            assert len(set(pairs)) == len(pairs)
            assert set(attn.v_head.tolist()) == set(range(HEADS))  # no head lost its last channel


def pruned(run: Run) -> list[tuple[int, PruneUnits]]:
    """(step, plan) of every PruneUnits applied."""
    return [(s, p) for s, p in run.plans if isinstance(p, PruneUnits)]

"""Head-level surgery: prune attention heads, clone a head Net2Net-style.

The head operations behind :func:`engine.surgery.apply_plan` (which
dispatches here; call that, not these functions). Plans and their semantics:
:mod:`engine.mechanisms.head_plans`. Same rules as
:mod:`engine.surgery_units`: ``weight``/``bias`` are replaced by new
``nn.Parameter`` objects at the old ones' optimizer positions, param-shaped
optimizer state (and pending ``.grad``) is sliced / zero-extended along the
same dim (kept entries keep their state exactly, new entries get zeros, 0-d
state such as Adam's ``step`` is kept), the optimizer is never rebuilt, and
every check runs before anything changes.

Shapes, for ``H`` heads of ``hd`` dims and ``n`` value channels: q/k weight
[H*hd, d], bias [H*hd]; v weight [n, d], bias [n]; o weight [d, n];
gain/v_head/v_slot [n]; head_gate [H].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engine.mechanisms.head_plans import CloneHead, HeadPlan, PruneHeads
from engine.mechanisms.plans import PlanError
from engine.models.char_transformer import CausalSelfAttention
from engine.surgery_units import _check_state, _reshape_param

Optim = torch.optim.Optimizer | None

__all__ = ["apply_head_plan", "clone_head", "prune_heads"]


def apply_head_plan(model: nn.Module, optimizer: Optim, plan: HeadPlan,
                    generator: torch.Generator | None = None) -> None:
    """Carry out a :class:`PruneHeads` or :class:`CloneHead` plan on ``model`` and ``optimizer``."""
    if isinstance(plan, PruneHeads):
        prune_heads(model, optimizer, plan)
    elif isinstance(plan, CloneHead):
        clone_head(model, optimizer, plan, generator)
    else:
        raise PlanError("plan", type(plan).__name__, "a PruneHeads or CloneHead")


def _attention(model: nn.Module, optimizer: Optim, path: str) -> CausalSelfAttention:
    """The attention module at ``path``, checked for a consistent head layout and mappable state."""
    try:
        mod: nn.Module | None = model.get_submodule(path)
    except AttributeError:
        mod = None
    if not isinstance(mod, CausalSelfAttention):
        names = [n for n, m in model.named_modules() if isinstance(m, CausalSelfAttention)]
        raise PlanError("attn", path, f"the path of a CausalSelfAttention; valid: {names}")
    h, hd, n = mod.n_head, mod.head_dim, mod.v.out_features
    sizes = {"q rows": mod.q.out_features, "k rows": mod.k.out_features, "head_gate": mod.head_gate.numel(),
             "o inputs": mod.o.in_features, "gain": mod.gain.numel(), "v_head": mod.v_head.numel(),
             "v_slot": mod.v_slot.numel()}
    want = {"q rows": h * hd, "k rows": h * hd, "head_gate": h}
    wrong = {k: v for k, v in sizes.items() if v != want.get(k, n)}
    if wrong or (n and not 0 <= int(mod.v_head.min()) <= int(mod.v_head.max()) < h):
        raise PlanError("attn", path, f"an attention module with {h} heads of {hd} dims and {n} value channels "
                        f"(v_head in 0..{h - 1}); mismatched: {wrong or 'v_head values'}")
    if mod.head_gate.requires_grad:
        raise PlanError("attn", path, "a module whose head_gate is a buffer, not a differentiable probe")
    named: dict[str, Tensor | None] = {}
    for lin in ("q", "k", "v"):
        named[f"{path}.{lin}.weight"] = getattr(mod, lin).weight
        named[f"{path}.{lin}.bias"] = getattr(mod, lin).bias
    named[f"{path}.o.weight"] = mod.o.weight
    _check_state(optimizer, named)
    return mod


def _rows(heads: Tensor, hd: int) -> Tensor:
    """q/k row indices [len(heads) * hd] of ``heads`` (long [k]), head by head."""
    return (heads.view(-1, 1) * hd + torch.arange(hd)).flatten()


def prune_heads(model: nn.Module, optimizer: Optim, plan: PruneHeads) -> None:
    """Carry out a :class:`PruneHeads` plan."""
    attn = _attention(model, optimizer, plan.attn)
    h, hd = attn.n_head, attn.head_dim
    bad = [i for i in plan.heads if i >= h]
    if bad:
        raise PlanError("heads", bad, f"head indices of {plan.attn} in 0..{h - 1}")
    if len(plan.heads) >= h:
        raise PlanError("heads", plan.heads, f"at most {h - 1} of the {h} heads of {plan.attn}; "
                        "a layer keeps at least one head")
    dev = attn.v_head.device
    keep = torch.tensor([i for i in range(h) if i not in plan.heads], dtype=torch.long)  # [H'] kept heads
    renumber = torch.full((h,), -1, dtype=torch.long)
    renumber[keep] = torch.arange(len(keep))  # old head -> new head
    chan = torch.isin(attn.v_head, keep.to(dev)).nonzero().flatten().cpu()  # [n'] kept value channels
    rows = _rows(keep, hd)
    for lin in (attn.q, attn.k):
        _reshape_param(lin, "weight", optimizer, 0, rows, 0)   # [H'*hd, d]
        _reshape_param(lin, "bias", optimizer, 0, rows, 0)     # [H'*hd]
        lin.out_features = len(rows)
    _reshape_param(attn.v, "weight", optimizer, 0, chan, 0)    # [n', d]
    _reshape_param(attn.v, "bias", optimizer, 0, chan, 0)      # [n']
    attn.v.out_features = len(chan)
    _reshape_param(attn.o, "weight", optimizer, 1, chan, 0)    # [d, n']
    attn.o.in_features = len(chan)
    c = chan.to(dev)
    attn.gain = attn.gain.index_select(0, c)
    attn.v_slot = attn.v_slot.index_select(0, c)
    attn.v_head = renumber.to(dev).index_select(0, attn.v_head.index_select(0, c))
    attn.head_gate = attn.head_gate.index_select(0, keep.to(dev))
    attn.n_head = len(keep)
    attn.last_abs = attn.last_entropy = None  # shaped for the old layout


def clone_head(model: nn.Module, optimizer: Optim, plan: CloneHead, generator: torch.Generator | None) -> None:
    """Carry out a :class:`CloneHead` plan."""
    attn = _attention(model, optimizer, plan.attn)
    h, hd, n = attn.n_head, attn.head_dim, attn.v.out_features
    if plan.head >= h:
        raise PlanError("head", plan.head, f"a head index of {plan.attn} in 0..{h - 1}")
    src = _rows(torch.tensor([plan.head]), hd)                 # [hd] parent's q/k rows
    chan = (attn.v_head == plan.head).nonzero().flatten()      # [c] parent's value channels (device)
    c = len(chan)
    gen_dev = generator.device if generator is not None else torch.device("cpu")

    def noisy(rows: Tensor) -> Tensor:  # [r, d] -> copies + noise * std(row) * N(0, 1)
        z = torch.randn(rows.shape, generator=generator, device=gen_dev, dtype=rows.dtype).to(rows.device)
        return rows + plan.noise * rows.std(dim=1, correction=0, keepdim=True) * z if len(rows) else rows

    # Everything drawn and computed before the first change (a failure leaves the module intact).
    w = {lin: getattr(attn, lin).weight.detach() for lin in ("q", "k", "v")}
    q_rows = noisy(w["q"].index_select(0, src.to(w["q"].device)))   # [hd, d]
    k_rows = noisy(w["k"].index_select(0, src.to(w["k"].device)))   # [hd, d]
    v_rows = noisy(w["v"].index_select(0, chan.to(w["v"].device)))  # [c, d]
    fills = {lin: getattr(attn, lin).bias.detach().index_select(0, idx.to(w[lin].device))
             for lin, idx in (("q", src), ("k", src), ("v", chan))}
    half = attn.o.weight.detach().index_select(1, chan.to(attn.o.weight.device)) * 0.5  # [d, c]

    for lin, rows, r in (("q", q_rows, hd), ("k", k_rows, hd), ("v", v_rows, c)):
        mod = getattr(attn, lin)
        every = torch.arange(mod.out_features)
        _reshape_param(mod, "weight", optimizer, 0, every, r, rows)       # [.. + r, d]
        _reshape_param(mod, "bias", optimizer, 0, every, r, fills[lin])   # [.. + r]
        mod.out_features += r
    _reshape_param(attn.o, "weight", optimizer, 1, torch.arange(n), c, half)  # copies' columns: [d, n + c]
    attn.o.in_features = n + c
    with torch.no_grad():  # the parent's columns are halved too (state kept: see CloneHead)
        attn.o.weight.index_copy_(1, chan.to(attn.o.weight.device), half)
    attn.gain = torch.cat([attn.gain, attn.gain.index_select(0, chan)])
    attn.v_slot = torch.cat([attn.v_slot, attn.v_slot.index_select(0, chan)])
    attn.v_head = torch.cat([attn.v_head, attn.v_head.new_full((c,), h)])
    attn.head_gate = torch.cat([attn.head_gate, attn.head_gate[plan.head:plan.head + 1]])
    attn.n_head = h + 1
    attn.last_abs = attn.last_entropy = None

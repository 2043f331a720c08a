"""Probe-batch ablation for functional preservation: how much does removing one unit change the output?

For each candidate unit the probe batch is run with that unit silenced and the
effect is the mean KL divergence ``KL(p_full || p_ablated)`` of the next-token
distributions over the batch's positions (>= 0; 0 when the unit does not
matter). Candidates are batched: the probe batch is repeated once per
candidate and a forward hook on each candidate's producing layer (``fc`` or
``v``) multiplies its output by a 0/1 mask [rows, 1, units]; a zero
pre-activation silences an FFN unit exactly (``gelu(0) = 0``) and a zero value
channel silences an attention channel exactly (its output is a weighted sum of
zeros), the same as a gain of 0.

The model runs in eval mode (no dropout) without recording ``last_abs``; both
are restored afterwards, and hooks are always removed. Weights are never touched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Most sequences per batched forward (probe rows x candidates), bounding memory.
MAX_ROWS = 512


def _recorders(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, "record", None), bool)]


@torch.no_grad()
def ablation_effects(model: nn.Module, idx: Tensor, units: list[tuple[str, int]],
                     max_rows: int = MAX_ROWS) -> Tensor:
    """Effect [len(units)] of silencing each ``(layer path, unit position)`` on ``model(idx)``.

    ``idx`` [B, T] are the probe token ids; the result is on the CPU (float64).
    """
    out = torch.zeros(len(units), dtype=torch.float64)
    if not units:
        return out
    was_training = model.training
    recorders = _recorders(model)
    flags = [m.record for m in recorders]
    hooks: list[torch.utils.hooks.RemovableHandle] = []
    masks: dict[str, Tensor] = {}

    def hook_for(path: str):  # type: ignore[no-untyped-def]
        def hook(_mod: nn.Module, _inp: object, output: Tensor) -> Tensor:
            return output * masks[path]  # [rows, T, units] * [rows, 1, units]
        return hook

    try:
        model.eval()
        for m in recorders:
            m.record = False
        b = idx.shape[0]
        base = F.log_softmax(model(idx).float(), dim=-1)  # [B, T, V]
        p_base = base.exp()
        paths = sorted({p for p, _ in units})
        layers = {p: model.get_submodule(p) for p in paths}
        for p in paths:
            hooks.append(layers[p].register_forward_hook(hook_for(p)))
        chunk = max(1, max_rows // b)
        for start in range(0, len(units), chunk):
            part = units[start:start + chunk]
            c = len(part)
            for p in paths:
                w = layers[p].weight
                masks[p] = torch.ones(c, b, 1, w.shape[0], dtype=w.dtype, device=w.device)
            for i, (p, j) in enumerate(part):
                masks[p][i, :, :, j] = 0.0  # candidate i silences unit j of layer p in its rows
            for p in paths:
                masks[p] = masks[p].flatten(0, 1)  # [c*B, 1, units]
            logp = F.log_softmax(model(idx.repeat(c, 1)).float(), dim=-1).view(c, *base.shape)  # [c, B, T, V]
            kl = (p_base * (base - logp)).sum(-1).mean((1, 2))  # [c]
            out[start:start + c] = kl.double().cpu()
    finally:
        for h in hooks:
            h.remove()
        for m, f in zip(recorders, flags):
            m.record = f
        model.train(was_training)
    return out

"""One class stage of the neurogenesis family, run lazily as a generator of batches.

:func:`run_stage` yields :class:`Batch` objects that the trainer hands back to
``train_step`` (so it sees every step); between batches it measures outlier
fractions, grows levels and switches phases:

* NDL (``neurogenesis`` on), for each level L = 1..K: measure the fraction of
  the new class's training samples whose error through levels 1..L exceeds
  ``Th_L``; while it is above the limit and the level is under its cap: grow
  (encoder + mirrored decoder), a plasticity phase (level L's autoencoder on
  the outliers: weights touching new units at LR, old encoder frozen, old
  decoder at LR * ``slow_lr_scale``), a stability phase (all of level L at
  LR * ``slow_lr_scale`` on the new class + replay), and measure again. A level
  whose lower neighbour grew this stage runs one plasticity + stability round
  even without growing itself, so it learns to use (and to reconstruct) the
  new units it received. A round's last batch carries a probe that measures
  the level right after its step, so when a level stops growing its
  :class:`~engine.telemetry.events.StructuralChange` (one per level per stage,
  ``units`` = all it added) leaves with that step's ``StepResult``.
* CL (``neurogenesis`` off): levels are measured (telemetry only) and the whole
  autoencoder is fine-tuned on the new class (+ replay for CL+IR).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import chain
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from engine.mechanisms.neurogenesis import growth_plans, outlier_mask
from engine.models.autoencoder import StackedAutoencoder, per_sample_error
from engine.surgery import apply_plan
from engine.telemetry.events import Sample, StructuralChange

MODES = ("base", "plasticity", "stability", "finetune")


@dataclass(frozen=True)
class Batch:
    """Images [b, D] to train on, and how: ``level`` 0 means the whole autoencoder.

    ``after``: run by ``apply_update`` right after this batch's step (the
    last batch of a growth round measures its level there).
    """

    mode: str
    level: int
    x: Tensor
    after: Callable[[], None] | None = None


def minibatches(x: Tensor, batch_size: int, epochs: int, gen: torch.Generator) -> Iterator[Tensor]:
    """``epochs`` shuffled passes over ``x`` [n, D] (shuffles drawn from ``gen``)."""
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen).to(x.device)
        for i in range(0, len(x), batch_size):
            yield x[perm[i:i + batch_size]]


def make_optimizer(model: StackedAutoencoder, kind: str, lr: float, momentum: float) -> torch.optim.Optimizer:
    """One param group per level (its encoder and mirrored decoder), so levels get their own LR."""
    groups = [{"params": model.level_parameters(level)} for level in range(1, model.levels + 1)]
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def plasticity_scales(model: StackedAutoencoder, level: int, added: list[int], slow: float,
                      new_decoder: float) -> dict[nn.Parameter, Tensor]:
    """Per-entry LR multipliers of level ``level`` in a plasticity phase.

    Units added this stage are the last ``added[i]`` of each layer (growth
    appends). Entries touching a new hidden unit of this level or a new input
    unit (grown one level below) train at the full LR (the new hidden units'
    decoder columns at ``new_decoder``); the old encoder is frozen (0) and the
    old decoder trains at ``slow``.
    """
    i = level - 1
    enc, dec = model.encoder[i], model.decoder[i]
    n_h, n_in = enc.out_features, enc.in_features
    new_h, new_in = added[i], (added[i - 1] if i > 0 else 0)
    dev = enc.weight.device
    enc_w = torch.zeros(n_h, n_in, device=dev)           # [h_L, h_{L-1}]
    enc_w[n_h - new_h:, :] = 1.0
    enc_w[:, n_in - new_in:] = 1.0
    enc_b = torch.zeros(n_h, device=dev)
    enc_b[n_h - new_h:] = 1.0
    dec_w = torch.full((n_in, n_h), slow, device=dev)    # [h_{L-1}, h_L]
    dec_w[:, n_h - new_h:] = new_decoder
    dec_w[n_in - new_in:, :] = 1.0
    dec_b = torch.full((n_in,), slow, device=dev)
    dec_b[n_in - new_in:] = 1.0
    return {enc.weight: enc_w, enc.bias: enc_b, dec.weight: dec_w, dec.bias: dec_b}


def scaled_step(optimizer: torch.optim.Optimizer, scales: dict[nn.Parameter, Tensor]) -> None:
    """An optimizer step whose update of each entry is multiplied by ``scales`` (0 = frozen).

    Adam's and SGD's updates are linear in the LR, so this equals a per-entry
    LR; frozen entries also get zero gradient so their moments take nothing in.
    """
    old = {p: p.detach().clone() for p in scales}
    for p, s in scales.items():
        if p.grad is not None:
            p.grad.mul_((s > 0).to(p.grad.dtype))
    optimizer.step()
    with torch.no_grad():
        for p, s in scales.items():
            p.copy_(old[p] + s * (p - old[p]))


def stack_loss(model: StackedAutoencoder, x: Tensor) -> Tensor:
    """Mean over levels L of the MSE of the reconstruction through levels 1..L.

    Whole-network training (base, fine-tuning) uses it so every level's
    decoder reconstructs its own input (decoded and encoded codes agree):
    the per-level thresholds and level-wise phases rely on that, as a stack
    trained level by level would.
    """
    codes = model.encode(x)
    losses = [((model.decode_from(h, level) - x) ** 2).mean() for level, h in enumerate(codes, 1)]
    return torch.stack(losses).mean()


def batch_loss(exp: Any, batch: Batch) -> tuple[Tensor, dict[nn.Parameter, Tensor] | None]:
    """Forward pass of one batch in its phase: (loss, per-entry LR scales or None).

    Also sets the level groups' learning rates for the phase (``exp.lr`` is the
    run's main rate, with any rollback scaling).
    """
    model, opt, fam, lr = exp.model, exp.optimizer, exp.fam, exp.lr
    if not model.training:
        model.train()
    scales = None
    if batch.level == 0:
        for g in opt.param_groups:
            g["lr"] = lr
        return stack_loss(model, batch.x), None
    with torch.no_grad():
        h_prev = model.code(batch.x, batch.level - 1)  # lower levels fixed: [b, h_{L-1}]
    _, recon = model.level_forward(h_prev, batch.level)
    loss = ((recon - h_prev) ** 2).mean()
    opt.param_groups[batch.level - 1]["lr"] = lr * (fam.slow_lr_scale if batch.mode == "stability" else 1.0)
    if batch.mode == "plasticity":
        scales = plasticity_scales(model, batch.level, exp.stage_added, fam.slow_lr_scale,
                                   fam.new_decoder_lr_scale)
    return loss, scales


def update(exp: Any, loss: Tensor, scales: dict[nn.Parameter, Tensor] | None) -> float:
    """Backward and (scaled) step for a loss from :func:`batch_loss`; returns the gradient norm."""
    opt = exp.optimizer
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
    grad_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
    if scales is None:
        opt.step()
    else:
        scaled_step(opt, scales)
    return grad_norm


def measure_level(exp: Any, level: int, x: Tensor) -> tuple[float, Tensor]:
    """Outlier fraction of ``x`` at ``level`` and its outlier mask [n]; recorded and queued as samples."""
    model = exp.model
    model.eval()
    errors = per_sample_error(model, x, level)
    th = exp.thresholds.thresholds[level - 1]
    mask = outlier_mask(errors, th)
    frac = float(mask.float().mean()) if len(mask) else 0.0
    name = f"encoder.{level - 1}"
    exp.layer_error[level - 1], exp.outlier_frac[level - 1] = float(errors.mean()), frac
    exp.pending.append((Sample("ndl_layer_reconstruction_error", (name,), float(errors.mean())),
                        Sample("ndl_outlier_fraction_ratio", (name,), frac)))
    return frac, mask


def grow(exp: Any, level: int, count: int) -> None:
    """Add ``count`` units to hidden layer ``level`` (encoder + mirrored decoder) via surgery."""
    for plan in growth_plans(exp.model.level_paths(level), count, exp.fam.growth_init):
        apply_plan(exp.model, exp.optimizer, plan, exp.gen)
    exp.stage_added[level - 1] += count
    exp.total_added[level - 1] += count
    name = f"encoder.{level - 1}"
    exp.pending.append((Sample("ndl_stage_neurons_added", (name,), float(exp.stage_added[level - 1])),
                        Sample("ndl_neurons_added_total", (name,), float(exp.total_added[level - 1]))))


def _phases(exp: Any, level: int, outliers: Tensor, mixed: Tensor, after: Callable[[], None]) -> Iterator[Batch]:
    """A plasticity + stability round of ``level``; its last batch carries ``after``.

    One batch of look-ahead: every shuffle still comes from ``exp.gen`` in
    the same order (nothing else draws from it between two batches).
    """
    fam, bs = exp.fam, exp.cfg.train.batch_size
    plastic = (Batch("plasticity", level, xb) for xb in minibatches(outliers, bs, fam.plasticity_epochs, exp.gen))
    batches = chain(plastic,
                    (Batch("stability", level, xb) for xb in minibatches(mixed, bs, fam.stability_epochs, exp.gen)))
    pending: Batch | None = None
    for batch in batches:
        if pending is not None:
            yield pending
        pending = batch
    if pending is not None:
        yield replace(pending, after=after)


class _LevelProbe:
    """Measures level ``level`` after a round's last step and decides whether it grows again.

    When the level has grown this stage and the gate says stop, one
    ``grow`` :class:`StructuralChange` for the whole stage is queued in
    ``exp.pending_events`` (returned with that step).
    """

    def __init__(self, exp: Any, level: int, x_new: Tensor, first_fraction: float) -> None:
        self.exp, self.level, self.x_new = exp, level, x_new
        self.first_fraction = first_fraction  # outlier fraction before the level's first growth
        self.fraction, self.mask = first_fraction, torch.zeros(0, dtype=torch.bool)  # set by measure()

    def measure(self) -> None:
        """Measure the level now (after the round's last step); queue its growth event when it stops."""
        exp, i = self.exp, self.level - 1
        self.fraction, self.mask = measure_level(exp, self.level, self.x_new)
        added = exp.stage_added[i]
        if added and exp.gate.units_to_add(self.fraction, added) == 0:
            why = ("growth cap reached" if exp.gate.needs_growth(self.fraction)
                   else f"outliers now {self.fraction:.3f} <= {exp.gate.max_fraction}")
            exp.pending_events.append(StructuralChange(
                "grow", f"encoder.{i}", exp.stage_epoch, units=added, subject=str(exp.current_class),
                reason=f"class {exp.current_class}: outlier fraction {self.first_fraction:.3f} > "
                       f"{exp.gate.max_fraction} at Th_{self.level}; {why}"))


def run_stage(exp: Any, x_new: Tensor, replay: dict[int, Tensor]) -> Iterator[Batch]:
    """The algorithm of one class stage for new-class training images ``x_new`` [n, D].

    ``replay`` maps each earlier class to its replayed images (empty without replay).
    """
    fam, k = exp.fam, exp.model.levels
    mixed = torch.cat([x_new, *replay.values()]) if replay else x_new
    if not fam.neurogenesis:
        for level in range(1, k + 1):
            measure_level(exp, level, x_new)
        for xb in minibatches(mixed, exp.cfg.train.batch_size, fam.finetune_epochs, exp.gen):
            yield Batch("finetune", 0, xb)
        return
    gate = exp.gate
    for level in range(1, k + 1):
        frac, mask = measure_level(exp, level, x_new)
        probe = _LevelProbe(exp, level, x_new, frac)
        below_grew = level > 1 and exp.stage_added[level - 2] > 0
        if below_grew and not gate.units_to_add(frac, exp.stage_added[level - 1]):
            yield from _phases(exp, level, x_new[mask] if mask.any() else x_new, mixed, probe.measure)
            frac, mask = probe.fraction, probe.mask
            probe.first_fraction = frac
        while (count := gate.units_to_add(frac, exp.stage_added[level - 1])) > 0:
            grow(exp, level, count)
            yield from _phases(exp, level, x_new[mask] if mask.any() else x_new, mixed, probe.measure)
            frac, mask = probe.fraction, probe.mask

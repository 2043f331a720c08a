"""Attention-head importance (Michel et al. 2019), attention entropy and head pruning orders.

Scores are dicts keyed by attention module path (``"blocks.{i}.attn"``), one
value per head ([n_head] tensors, CPU float32), for models built from
:class:`engine.models.char_transformer.CausalSelfAttention`. Every function here
runs the model in eval mode (dropout off) and restores its mode, gates and
recording flags afterwards; parameters and their ``.grad`` are never touched,
so results are deterministic given the batches.

Pruning orders return ``(path, head)`` pairs in the model's current numbering;
turn them into plans with :func:`engine.mechanisms.head_plans.prune_plans`
(one plan per layer, so the indices stay valid).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, NamedTuple

import torch
from torch import Tensor, nn

from engine.errors import ParameterError
from engine.models.char_transformer import CausalSelfAttention

__all__ = ["HeadImportance", "attention_entropy", "entropy_order", "head_importance", "normalize_per_layer",
           "prune_order", "random_order"]

#: ``loss_fn(model, inputs, targets) -> scalar loss``; the default calls ``model.loss(inputs, targets)``.
LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


def _attention(model: nn.Module) -> dict[str, CausalSelfAttention]:
    found = {n: m for n, m in model.named_modules() if isinstance(m, CausalSelfAttention)}
    if not found:
        raise ParameterError("model", type(model).__name__, "a model containing CausalSelfAttention modules")
    return found


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _split(batch: tuple[Tensor, Tensor] | Tensor) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    try:
        x, y = batch
    except (TypeError, ValueError):
        raise ParameterError("batches", type(batch).__name__, "(inputs, targets) pairs of tensors") from None
    return x, y


class HeadImportance(NamedTuple):
    """Head importance per attention path ([n_head] each): ``normalized, raw = head_importance(...)``."""

    normalized: dict[str, Tensor]  #: raw / its per-layer L2 norm: the scores compared across layers
    raw: dict[str, Tensor]         #: mean over sequences of |dL_x/dxi_h| (L_x: one sequence's mean loss)


def head_importance(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                    loss_fn: LossFn | None = None) -> HeadImportance:
    """Michel et al.'s head importance ``I_h = E_x |dL(x)/dxi_h|`` per attention path, per example.

    ``x`` is one sequence (row of a batch) and ``L(x)`` its mean token loss;
    the expectation is the mean over every sequence of every batch, so the
    absolute value is taken **per sequence**, before averaging (with a
    batch-mean loss, sequences whose gradients have opposite signs would
    cancel). One backward pass per batch: each module's ``head_probe`` is set,
    for the duration of the call, to a leaf [B, n_head] copy of ``head_gate``
    (ones unless heads are being gated: the derivative is taken at the model as
    it is) that requires grad; ``xi[b, h]`` only reaches sequence ``b`` (eval
    mode: no dropout, nothing mixes sequences), so with the batch loss
    ``L = mean_b L(x_b)``, ``B * dL/dxi[b, h] = dL(x_b)/dxi_h`` exactly.
    ``loss_fn`` must therefore return the mean over the batch's sequences of a
    per-sequence loss (the default ``model.loss``: equal-length sequences, so the
    token mean is that). Gradients come from ``torch.autograd.grad`` (no
    parameter ``.grad`` is written). Returns the raw values and each layer's
    values divided by their L2 norm (:func:`normalize_per_layer`, the scores
    Michel et al. compare globally). A head whose output cannot reach the loss
    (e.g. zero o columns) scores exactly 0.
    """
    attn = _attention(model)
    if any(a.head_probe is not None for a in attn.values()):
        raise ParameterError("model", "a head_probe already set", "a model not being scored already")
    total = {p: torch.zeros(a.n_head, dtype=torch.float64) for p, a in attn.items()}
    count = 0  # sequences seen
    with _eval(model), torch.enable_grad():
        try:
            for batch in batches:
                x, y = _split(batch)
                if y is None:
                    raise ParameterError("batches", "a bare input tensor", "(inputs, targets) pairs")
                b = x.shape[0]
                probes = {p: a.head_gate.detach().expand(b, -1).clone().requires_grad_(True)  # [B, n_head]
                          for p, a in attn.items()}
                for p, a in attn.items():
                    a.head_probe = probes[p]
                loss = model.loss(x, y) if loss_fn is None else loss_fn(model, x, y)  # type: ignore[operator]
                grads = torch.autograd.grad(loss, list(probes.values()), allow_unused=True)  # [B, n_head] each
                for p, g in zip(probes, grads):
                    if g is not None:  # per sequence: |dL(x_b)/dxi| = |B dL/dxi[b]|, summed over b -> [n_head]
                        total[p] += (g.detach().double() * b).abs().sum(0).cpu()
                count += b
        finally:
            for a in attn.values():
                a.head_probe = None
    if count == 0:
        raise ParameterError("batches", "no batches", "at least one (inputs, targets) batch")
    raw = {p: (t / count).float() for p, t in total.items()}
    return HeadImportance(normalize_per_layer(raw), raw)


def normalize_per_layer(scores: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each layer's scores divided by their L2 norm (all-zero layers stay 0, never NaN)."""
    out = {}
    for path, s in scores.items():
        norm = s.norm()
        out[path] = s / norm if norm > 0 else torch.zeros_like(s)
    return out


@torch.no_grad()
def attention_entropy(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor] | Tensor]) -> dict[str, Tensor]:
    """Mean attention entropy (nats) per head [n_head] per attention path, averaged over batches.

    Per batch: each query's entropy over its causal keys, averaged over batch
    and all query positions, position 0 (entropy 0) included
    (:class:`CausalSelfAttention` ``record_entropy``). ``batches`` are
    ``(inputs, targets)`` pairs or bare input tensors; targets are unused.
    """
    attn = _attention(model)
    flags = {p: a.record_entropy for p, a in attn.items()}
    total = {p: torch.zeros(a.n_head, dtype=torch.float64) for p, a in attn.items()}
    count = 0
    with _eval(model):
        try:
            for a in attn.values():
                a.record_entropy = True
            for batch in batches:
                model(_split(batch)[0])
                for p, a in attn.items():
                    assert a.last_entropy is not None  # set by the forward just run
                    total[p] += a.last_entropy.double().cpu()
                count += 1
        finally:
            for p, a in attn.items():
                a.record_entropy, a.last_entropy = flags[p], None
    if count == 0:
        raise ParameterError("batches", "no batches", "at least one batch")
    return {p: (t / count).float() for p, t in total.items()}


def _budget(total: int, count: int | None, fraction: float | None) -> int:
    """Heads to choose: ``count``, or ``fraction`` of ``total`` rounded to nearest (halves up)."""
    if (count is None) == (fraction is None):
        raise ParameterError("count", count, "exactly one of count (heads) or fraction= (of all heads)")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise ParameterError("fraction", fraction, "a number in [0, 1]")
        return math.floor(fraction * total + 0.5)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ParameterError("count", count, "a whole number of heads >= 0 (for a share of the heads pass "
                             "fraction=...)")
    return count


def prune_order(scores: dict[str, Tensor], count: int | None = None, min_heads_per_layer: int = 1, *,
                fraction: float | None = None) -> list[tuple[str, int]]:
    """The globally least important heads, least important first: ``(attn path, head)`` pairs.

    As in Michel et al., per-layer normalised scores (:func:`head_importance`)
    are compared across all layers. Chooses ``count`` heads, or with
    ``fraction=`` instead ``round(fraction * total heads)`` (halves up), skipping
    heads whose layer would keep fewer than ``min_heads_per_layer`` heads, so
    fewer may be returned. Ties go to the earlier layer, then the lower head index.
    """
    if isinstance(min_heads_per_layer, bool) or not isinstance(min_heads_per_layer, int) \
            or min_heads_per_layer < 1:
        raise ParameterError("min_heads_per_layer", min_heads_per_layer, "an integer >= 1")
    cands: list[tuple[float, int, int, str]] = []
    left: dict[str, int] = {}
    for li, (path, s) in enumerate(scores.items()):
        if s.dim() != 1 or not bool(torch.isfinite(s).all()):
            raise ParameterError("scores", f"{path}: {s.tolist()}", "1-D tensors of finite numbers, one per head")
        left[path] = s.numel()
        cands += [(float(v), li, h, path) for h, v in enumerate(s.tolist())]
    budget = _budget(len(cands), count, fraction)
    out: list[tuple[str, int]] = []
    for _, _, head, path in sorted(cands):
        if len(out) == budget:
            break
        if left[path] > min_heads_per_layer:
            left[path] -= 1
            out.append((path, head))
    return out


def random_order(heads: dict[str, int], count: int | None, generator: torch.Generator,
                 min_heads_per_layer: int = 1, *, fraction: float | None = None) -> list[tuple[str, int]]:
    """A random pruning order (the benchmark's control) over ``heads[path]`` heads per layer.

    Uniform scores drawn from ``generator`` (CPU), then :func:`prune_order`
    (``count`` or ``fraction=``): deterministic given the generator's state.
    """
    bad = {p: n for p, n in heads.items() if isinstance(n, bool) or not isinstance(n, int) or n < 1}
    if bad:
        raise ParameterError("heads", bad, "head counts >= 1 per attention path (model.head_counts())")
    scores = {p: torch.rand(n, generator=generator) for p, n in heads.items()}
    return prune_order(scores, count, min_heads_per_layer, fraction=fraction)


def entropy_order(entropy: dict[str, Tensor], count: int | None = None, min_heads_per_layer: int = 1, *,
                  fraction: float | None = None) -> list[tuple[str, int]]:
    """Pruning order from attention entropy (:func:`attention_entropy`): highest entropy first.

    Reasoning: a head whose attention is spread uniformly over the context
    only averages it (a bag of previous tokens, much like what the residual
    stream and other heads already provide), while the specialised heads
    found in trained transformers (previous-token, induction, delimiter heads)
    attend sharply and have low entropy. So high entropy suggests the least
    specialised head. Raw entropies are compared globally (they share a unit,
    nats, and a range set by the context length, so no per-layer
    normalisation). Entropy ignores how much the head's output is used (its
    o columns), which gradient importance captures; that is the comparison the
    benchmark makes. ``count`` / ``fraction=`` as in :func:`prune_order`.
    """
    return prune_order({p: -e for p, e in entropy.items()}, count, min_heads_per_layer, fraction=fraction)

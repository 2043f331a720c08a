"""The plasticity family's per-step machinery: forward, gradients, update, replacement ledger.

At batch size 1 a step of the 64-100-100-100-10 learner is a few dozen tiny
kernels, so Python, autograd and dispatcher overhead (module calls, graph
building and the autograd engine, the optimizer's wrappers, ``.grad``
bookkeeping) cost more than the arithmetic. :class:`Stepper` runs the *same*
kernels with less around them, so a run's numbers are bit for bit those of the
plain ``model(x)`` / ``loss.backward()`` / ``optimizer.step()`` loop (a test
compares both, and the benchmark's figures did not move):

* :func:`forward_hidden` is :meth:`MLP.forward` with ``F.linear`` on the
  modules' current parameters (what ``nn.Linear.forward`` calls);
* for plain SGD (no momentum, weight decay, nesterov or maximize; one param
  group) the forward runs without a graph and the gradients are the kernels
  autograd's backward of ``F.linear`` (addmm), ReLU and the loss calls, in its
  order: ``g.t().mm(h_in)`` for a weight, ``g.sum(0)`` for a bias,
  ``threshold_backward(g.mm(W), h, 0)`` into the layer below, and
  ``nll_loss_backward`` + ``_log_softmax_backward_data`` (cross-entropy) or
  ``mse_loss_backward``; the update is SGD's own ``p.add_(g, alpha=-lr)`` as
  one ``_foreach_add_``; any other optimizer goes through autograd and ``step()``;
* :class:`ReplacementLedger` sums replaced units per layer over a task and
  returns them as at most one :class:`StructuralChange` per layer per task.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from engine.mechanisms.plans import ReinitUnits
from engine.models.mlp import MLP
from engine.parallel import data_parallel
from engine.telemetry.events import StructuralChange

_aten = torch.ops.aten
_MEAN = 1  # aten reduction enum: mean
_IGNORE = -100  # F.cross_entropy's default ignore_index


def forward_hidden(model: MLP, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Output [batch, out] and each hidden layer's post-ReLU activations [batch, units]."""
    acts: list[Tensor] = []
    h = x
    for lin in model.layers:
        h = torch.relu(F.linear(h, lin.weight, lin.bias))
        acts.append(h)
    head = model.head
    return F.linear(h, head.weight, head.bias), acts


def plain_sgd(optimizer: torch.optim.Optimizer) -> bool:
    """True for SGD whose step is exactly ``p -= lr * grad`` (no state is ever created)."""
    if type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1:
        return False
    g = optimizer.param_groups[0]
    return (g["momentum"] == 0 and g["weight_decay"] == 0 and not g["nesterov"] and not g["maximize"]
            and not g.get("differentiable", False) and not g.get("fused", False)
            and not isinstance(g["lr"], Tensor))


class Stepper:
    """Forward and loss of a batch (:meth:`loss`), then gradients and the update (:meth:`update`)."""

    def __init__(self, model: MLP, optimizer: torch.optim.Optimizer, classification: bool) -> None:
        self.model, self.optimizer, self.classification = model, optimizer, classification
        self.params = list(model.parameters())  # W0, b0, W1, b1, ..., head W, head b
        # else autograd + optimizer.step(); data-parallel runs need autograd (DDP averages its gradients)
        self.manual = plain_sgd(optimizer) and not data_parallel()
        self._saved: tuple[Any, ...] | None = None

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """The batch's loss (0-d; without a graph on the manual path); keeps what :meth:`update` needs."""
        with torch.set_grad_enabled(not self.manual):
            out, hidden = forward_hidden(self.model, x)  # [b, out], [b, units] per hidden layer
            if not self.classification:
                loss, aux = F.mse_loss(out, y), None
            elif self.manual:  # F.cross_entropy's kernels, keeping log-probabilities for the backward
                logp = torch.log_softmax(out, 1)
                loss, total = _aten.nll_loss_forward(logp, y, None, _MEAN, _IGNORE)
                aux = (logp, total)
            else:
                loss, aux = F.cross_entropy(out, y), None
        self._saved = (x, y, out, hidden, aux)
        return loss

    def update(self, loss: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Step on ``loss`` (from the last :meth:`loss`); returns output, hidden activations
        and each parameter's gradient L2 norm (0-d tensors, parameter order)."""
        assert self._saved is not None, "update() without loss()"
        x, y, out, hidden, aux = self._saved
        self._saved = None
        if not self.manual:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norms = list(torch._foreach_norm([p.grad for p in self.params]))  # type: ignore[misc]
            self.optimizer.step()
            return out, hidden, norms
        with torch.no_grad():
            grads = self._gradients(x, y, out, hidden, aux)
            norms = list(torch._foreach_norm(grads))
            # lr read now: rollbacks and the lr fault drill scale the group
            torch._foreach_add_(self.params, grads, alpha=-self.optimizer.param_groups[0]["lr"])
        return out, hidden, norms

    def _gradients(self, x: Tensor, y: Tensor, out: Tensor, hidden: list[Tensor], aux: Any) -> list[Tensor]:
        one = torch.ones((), dtype=out.dtype, device=out.device)  # autograd's seed dL/dL
        if self.classification:
            logp, total = aux
            g = _aten.nll_loss_backward(one, logp, y, None, _MEAN, _IGNORE, total)
            g = _aten._log_softmax_backward_data(g, logp, 1, out.dtype)  # [b, classes]
        else:
            g = _aten.mse_loss_backward(one, out, y, _MEAN)  # [b, 1]
        lins = [*self.model.layers, self.model.head]
        inputs = [x, *hidden]  # input of each Linear
        grads: list[Tensor] = [one] * (2 * len(lins))
        for i in range(len(lins) - 1, -1, -1):
            grads[2 * i] = g.t().mm(inputs[i])  # [out, in]
            grads[2 * i + 1] = g.sum(0)          # [out]
            if i > 0:  # through the ReLU of hidden layer i-1
                g = _aten.threshold_backward(g.mm(lins[i].weight), hidden[i - 1], 0)
        return grads


class ReplacementLedger:
    """Units re-initialised per layer since the last flush, published as StructuralChange."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.pending: dict[str, int] = {}  # layer path -> units re-initialised

    def add(self, plan: ReinitUnits) -> None:
        """Count a plan that was just applied."""
        self.pending[plan.layer] = self.pending.get(plan.layer, 0) + len(plan.indices)

    def flush(self, epoch: int) -> list[StructuralChange]:
        """One ``replace`` event per layer with replacements since the last flush (layer order)."""
        out = [StructuralChange(kind="replace", layer=layer, epoch=epoch, units=n, reason=self.reason)
               for layer, n in sorted(self.pending.items(), key=lambda kv: _layer_key(kv[0])) if n > 0]
        self.pending = {}
        return out


def _layer_key(path: str) -> tuple[int, str]:
    """Sort ``layers.10`` after ``layers.9``."""
    tail = path.rsplit(".", 1)[-1]
    return (int(tail), path) if tail.isdigit() else (1 << 30, path)

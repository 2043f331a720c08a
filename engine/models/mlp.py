"""A plain ReLU MLP whose layers are addressable by module path for surgery.

Hidden layers are ``layers.0`` .. ``layers.{L-1}`` (nn.Linear), the output
layer is ``head``; ``hidden_pairs()`` lists (layer, next layer) paths in the
form the surgery plans take. ``forward(x, hidden=True)`` also returns each
hidden layer's post-ReLU activations [batch, units], which the mechanisms and
diagnostics read without extra forward passes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engine.mechanisms.plans import sample_init


class MLP(nn.Module):
    """``in_dim`` -> ``hidden_layers`` x ReLU(Linear(``units``)) -> Linear(``out_dim``)."""

    def __init__(self, in_dim: int, units: int, hidden_layers: int, out_dim: int,
                 init: str = "kaiming", generator: torch.Generator | None = None) -> None:
        super().__init__()
        dims = [in_dim] + [units] * hidden_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(dims[-1], out_dim)
        with torch.no_grad():  # weights from the same distribution replacements use; biases 0
            for lin in [*self.layers, self.head]:
                lin.weight.copy_(sample_init(init, lin.out_features, lin, generator))
                lin.bias.zero_()

    def hidden_pairs(self) -> list[tuple[str, str]]:
        """(hidden layer path, path of the Linear consuming it) for every hidden layer."""
        n = len(self.layers)
        return [(f"layers.{i}", f"layers.{i + 1}" if i + 1 < n else "head") for i in range(n)]

    def next_linear(self, i: int) -> nn.Linear:
        """The Linear that consumes hidden layer ``i``."""
        return self.layers[i + 1] if i + 1 < len(self.layers) else self.head  # type: ignore[return-value]

    def forward(self, x: Tensor, hidden: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Output [batch, out_dim]; with ``hidden`` also the activations of each hidden layer."""
        acts: list[Tensor] = []
        h = x
        for lin in self.layers:
            h = torch.relu(lin(h))
            acts.append(h)
        out = self.head(h)
        return (out, acts) if hidden else out

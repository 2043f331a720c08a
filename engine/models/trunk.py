"""Trunk MLP with sentinel seeds at its hidden-layer interfaces.

Hidden layer ``i`` produces ``h_i = relu(W_i h_{i-1} + b_i)`` of width
``hidden_dim``; its ``seeds_per_layer`` seeds each own a contiguous chunk of
those units and transform it (see :class:`SentinelSeed`). The head maps the
last hidden layer to class logits.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.models.seed import SentinelSeed


class SeededMLP(nn.Module):
    """``input_dim -> [hidden_dim] * num_layers -> n_classes`` with seeds."""

    def __init__(self, input_dim: int, hidden_dim: int, num_layers: int, n_classes: int,
                 seeds_per_layer: int, **seed_kwargs: float) -> None:
        super().__init__()
        if seeds_per_layer > hidden_dim:
            raise ValueError(f"seeds_per_layer={seeds_per_layer} must be <= hidden_dim={hidden_dim}")
        dims = [input_dim] + [hidden_dim] * num_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(hidden_dim, n_classes)
        self.seeds = nn.ModuleDict()
        # Chunk boundaries split the hidden units as evenly as possible.
        bounds = [round(k * hidden_dim / max(seeds_per_layer, 1)) for k in range(seeds_per_layer + 1)]
        self.chunks: list[list[tuple[int, int]]] = []
        for i in range(num_layers):
            spans = list(zip(bounds[:-1], bounds[1:])) if seeds_per_layer else []
            self.chunks.append(spans)
            for j, (a, b) in enumerate(spans):
                self.seeds[f"l{i}_s{j}"] = SentinelSeed(f"l{i}_s{j}", f"layers.{i}", b - a, **seed_kwargs)
        self._capture: list[torch.Tensor] | None = None

    def layer_seeds(self, i: int) -> list[SentinelSeed]:
        """Seeds of hidden layer ``i`` in chunk order."""
        return [self.seeds[f"l{i}_s{j}"] for j in range(len(self.chunks[i]))]  # type: ignore[misc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, n_classes]`` for inputs ``x: [batch, input_dim]``."""
        for i, layer in enumerate(self.layers):
            h = torch.relu(layer(x))  # [batch, hidden_dim]
            if self._capture is not None:
                self._capture.append(h.detach())
            seeds = self.layer_seeds(i)
            if any(s.alpha > 0.0 or s.state == "training" for s in seeds):
                h = torch.cat([s(h[:, a:b]) for s, (a, b) in zip(seeds, self.chunks[i])], dim=1)
            x = h
        return self.head(x)

    @torch.no_grad()
    def forward_with_activations(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits ``[batch, n_classes]`` and the post-ReLU trunk activations of
        every hidden layer (each ``[batch, hidden_dim]``) from one forward pass."""
        self._capture = []
        try:
            logits = self(x)
            return logits, self._capture
        finally:
            self._capture = None

    def interface_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Post-ReLU trunk activations per hidden layer, each ``[batch, hidden_dim]``."""
        return self.forward_with_activations(x)[1]

    def trunk_parameters(self) -> list[nn.Parameter]:
        """Parameters of the trunk (hidden layers and head), seeds excluded."""
        return [*self.layers.parameters(), *self.head.parameters()]

    def architecture(self) -> dict[str, object]:
        """Shapes per layer and seed states (saved in checkpoints)."""
        return {
            "layers": [list(l.weight.shape) for l in self.layers],
            "head": list(self.head.weight.shape),
            "seeds": {k: s.state for k, s in self.seeds.items()},  # type: ignore[union-attr]
        }

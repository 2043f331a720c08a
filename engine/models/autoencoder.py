"""A stacked autoencoder whose levels are addressable by module path for surgery.

Encoder ``encoder.i`` maps ``dims[i] -> dims[i+1]`` and its mirror
``decoder.i`` maps ``dims[i+1] -> dims[i]`` (``dims[0]`` is the input), so
"level L" (1-based) is the single-hidden-layer autoencoder
``decoder.{L-1}(act(encoder.{L-1}(h_{L-1})))`` and "reconstruction through
levels 1..L" encodes to ``h_L`` and decodes back through ``decoder.{L-1}`` ..
``decoder.0``. Hidden layers and intermediate decoders use ``activation``;
``decoder.0`` uses a sigmoid because pixels are in [0, 1].

The family's default activation is ELU (``ae_activation``): on 8x8 digits
with Adam it reached about half the base reconstruction error of sigmoid,
ReLU or tanh in the same epochs (0.019 vs 0.032-0.05 MSE), has no dead units
and gives a smooth top code for the Gaussian replay.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "elu": nn.functional.elu,
}


class StackedAutoencoder(nn.Module):
    """``input_dim`` -> ``hidden_sizes`` (encoder) -> mirrored decoder -> ``input_dim``."""

    def __init__(self, input_dim: int, hidden_sizes: list[int], activation: str = "elu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}; allowed: {sorted(ACTIVATIONS)}")
        dims = [input_dim, *hidden_sizes]
        self.activation = activation
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.decoder = nn.ModuleList(nn.Linear(b, a) for a, b in zip(dims[:-1], dims[1:]))

    # -- structure -------------------------------------------------------------
    @property
    def levels(self) -> int:
        """Number of levels (hidden layers of the encoder)."""
        return len(self.encoder)

    def sizes(self) -> list[int]:
        """Current width of each hidden layer ``h_1 .. h_K``."""
        return [int(lin.out_features) for lin in self.encoder]  # type: ignore[union-attr]

    def level_paths(self, level: int) -> list[tuple[str, str]]:
        """(producer, consumer) Linear paths of hidden layer ``h_level`` (1-based).

        Encoder side: ``encoder.{L-1}`` produces ``h_L`` and ``encoder.L``
        consumes it (at the top, the decoder's first layer ``decoder.{K-1}``).
        Mirrored decoder side (below the top only): ``decoder.L`` produces the
        decoded ``h_L`` that ``decoder.{L-1}`` consumes. Growing ``h_L`` means
        growing every pair consistently.
        """
        k, i = self.levels, level - 1
        if not 1 <= level <= k:
            raise ValueError(f"level {level} outside 1..{k}")
        if level == k:
            return [(f"encoder.{i}", f"decoder.{i}")]
        return [(f"encoder.{i}", f"encoder.{i + 1}"), (f"decoder.{i + 1}", f"decoder.{i}")]

    def level_parameters(self, level: int) -> list[nn.Parameter]:
        """Weights and biases of level ``level``'s autoencoder (encoder then decoder)."""
        enc, dec = self.encoder[level - 1], self.decoder[level - 1]
        return [enc.weight, enc.bias, dec.weight, dec.bias]  # type: ignore[list-item]

    # -- computation -------------------------------------------------------------
    def _act(self, h: Tensor) -> Tensor:
        return ACTIVATIONS[self.activation](h)

    def _dec_act(self, i: int, h: Tensor) -> Tensor:
        return torch.sigmoid(h) if i == 0 else self._act(h)

    def encode(self, x: Tensor, upto: int | None = None) -> list[Tensor]:
        """Activations ``[h_1, .., h_upto]`` of ``x`` [batch, input_dim] (default: all levels)."""
        out: list[Tensor] = []
        h = x
        for lin in list(self.encoder)[: self.levels if upto is None else upto]:
            h = self._act(lin(h))
            out.append(h)
        return out

    def code(self, x: Tensor, level: int | None = None) -> Tensor:
        """``h_level`` of ``x`` (``x`` itself for level 0; default the top code)."""
        level = self.levels if level is None else level
        return x if level == 0 else self.encode(x, level)[-1]

    def decode_from(self, h: Tensor, level: int | None = None) -> Tensor:
        """Decode ``h_level`` [batch, size] back to input space through ``decoder.{level-1}`` .. ``decoder.0``."""
        level = self.levels if level is None else level
        for i in range(level - 1, -1, -1):
            h = self._dec_act(i, self.decoder[i](h))
        return h

    def reconstruct(self, x: Tensor, level: int | None = None) -> Tensor:
        """Reconstruction of ``x`` through levels 1..``level`` (default: the whole stack)."""
        level = self.levels if level is None else level
        return self.decode_from(self.code(x, level), level)

    def level_forward(self, h_prev: Tensor, level: int) -> tuple[Tensor, Tensor]:
        """Level ``level``'s own autoencoder on its input ``h_{level-1}``: (hidden, reconstruction)."""
        i = level - 1
        h = self._act(self.encoder[i](h_prev))
        return h, self._dec_act(i, self.decoder[i](h))

    def forward(self, x: Tensor) -> Tensor:
        """Full reconstruction [batch, input_dim]."""
        return self.reconstruct(x)


@torch.no_grad()
def per_sample_error(model: StackedAutoencoder, x: Tensor, level: int | None = None,
                     chunk: int = 4096) -> Tensor:
    """MSE per sample [n] of the reconstruction through levels 1..``level``."""
    parts = [((model.reconstruct(xb, level) - xb) ** 2).mean(1) for xb in x.split(chunk)]
    return torch.cat(parts) if parts else x.new_zeros(0)

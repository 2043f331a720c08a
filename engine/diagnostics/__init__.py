"""Representation diagnostics computed on probe activations (rank, dead and dormant units).

Pure functions of tensors: no model, no telemetry. The plasticity family turns
their results into catalog samples.
"""

from engine.diagnostics.rank import (
    LayerStats,
    approximate_rank,
    dead_fraction,
    dormant_fraction,
    effective_rank,
    layer_stats,
    redo_scores,
    singular_values,
    stable_rank,
)

__all__ = [
    "LayerStats",
    "approximate_rank",
    "dead_fraction",
    "dormant_fraction",
    "effective_rank",
    "layer_stats",
    "redo_scores",
    "singular_values",
    "stable_rank",
]

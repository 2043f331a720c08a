"""Layer patterns of neuron apoptosis: which unit groups act, and at what share of the base rate.

A transformer with ``L`` blocks has ``2L`` unit groups: attention value
channels ``blocks.{i}.attn`` and FFN units ``blocks.{i}.mlp``. A pattern maps
each group to a rate multiplier (0: the group never acts; the strategy's rate,
e.g. ``prune_rate``, is multiplied by it).

Halves (also well defined for odd ``L``): block ``i`` is *shallow* when
``i <= (L-1)/2`` and *deep* when ``i >= (L-1)/2``. For even ``L`` the halves
split the blocks evenly; for odd ``L`` the middle block belongs to both (so for
``L = 1`` the single block is both shallow and deep and no pattern is empty).

=============================  ==============================================
standard                       every FFN group
deep_only / shallow_only       FFN groups of the deep / shallow half
alternating                    FFN groups of even blocks (0, 2, ...)
middle_only                    FFN groups of blocks 1..L-2; for L < 3 every block
attention_only                 every attention group
attention_shallow / _deep      attention groups of the shallow / deep half
ffn_and_attention              every group
shallow_ffn_deep_attention     FFN of the shallow half and attention of the deep half
graduated                      every FFN group, multiplier (i+1)/L (rising with depth)
=============================  ==============================================

``layer_rates`` (``"blocks.0.mlp=0.5,blocks.3.attn=2"``) then *replaces* the
multiplier of the named groups: a group the pattern left out can be switched on
and a selected one off (``=0``).
"""

from __future__ import annotations

import math

from engine.errors import ConfigError

PATTERNS: tuple[str, ...] = (
    "standard", "deep_only", "shallow_only", "alternating", "middle_only", "attention_only",
    "attention_shallow", "attention_deep", "ffn_and_attention", "shallow_ffn_deep_attention", "graduated",
)


def shallow(i: int, n_blocks: int) -> bool:
    """Whether block ``i`` of ``n_blocks`` is in the shallow half (``i <= (L-1)/2``)."""
    return 2 * i <= n_blocks - 1


def deep(i: int, n_blocks: int) -> bool:
    """Whether block ``i`` of ``n_blocks`` is in the deep half (``i >= (L-1)/2``)."""
    return 2 * i >= n_blocks - 1


def _multiplier(pattern: str, kind: str, i: int, n: int) -> float:
    """Rate multiplier of the ``kind`` ("ffn" or "attn") group of block ``i`` of ``n`` under ``pattern``."""
    ffn, attn = kind == "ffn", kind == "attn"
    rule = {
        "standard": ffn,
        "deep_only": ffn and deep(i, n),
        "shallow_only": ffn and shallow(i, n),
        "alternating": ffn and i % 2 == 0,
        "middle_only": ffn and (n < 3 or 0 < i < n - 1),
        "attention_only": attn,
        "attention_shallow": attn and shallow(i, n),
        "attention_deep": attn and deep(i, n),
        "ffn_and_attention": True,
        "shallow_ffn_deep_attention": (ffn and shallow(i, n)) or (attn and deep(i, n)),
        "graduated": ffn,
    }[pattern]
    if not rule:
        return 0.0
    return (i + 1) / n if pattern == "graduated" else 1.0


def parse_layer_rates(text: str) -> dict[str, float]:
    """``"blocks.0.mlp=0.5, blocks.3.attn=2"`` -> ``{"blocks.0.mlp": 0.5, "blocks.3.attn": 2.0}``.

    Checks the syntax only (group names are checked against a model by
    :func:`group_rates`); a bad entry is a ConfigError naming ``layer_rates``.
    """
    out: dict[str, float] = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, sep, value = (s.strip() for s in item.partition("="))
        try:
            rate = float(value) if sep and name else math.nan
        except ValueError:
            rate = math.nan
        if not (math.isfinite(rate) and rate >= 0):
            raise ConfigError("layer_rates", item, "comma-separated group=multiplier entries with a "
                              "multiplier >= 0, e.g. 'blocks.0.mlp=0.5,blocks.3.attn=2'")
        if name in out:
            raise ConfigError("layer_rates", name, "each group at most once")
        out[name] = rate
    return out


def group_rates(pattern: str, groups: list[tuple[str, str, int]], layer_rates: str = "") -> dict[str, float]:
    """Rate multiplier per group name of ``groups`` (name, kind, block) under ``pattern`` and overrides.

    Unknown patterns and unknown group names in ``layer_rates`` are ConfigErrors
    listing the valid ones.
    """
    if pattern not in PATTERNS:
        raise ConfigError("layer_pattern", pattern, "allowed: " + ", ".join(PATTERNS))
    n_blocks = 1 + max((b for _, _, b in groups), default=-1)
    out = {name: _multiplier(pattern, kind, block, n_blocks) for name, kind, block in groups}
    overrides = parse_layer_rates(layer_rates)
    unknown = sorted(set(overrides) - set(out))
    if unknown:
        raise ConfigError("layer_rates", ",".join(unknown), "unit groups of the model; valid: " + ", ".join(out))
    out.update(overrides)
    return out

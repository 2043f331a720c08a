"""Layer patterns, per-group rate overrides and the apoptosis config section."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ValidationError

from engine.config import Section
from engine.errors import ConfigError
from engine.mechanisms.apoptosis import Apoptosis
from engine.mechanisms.apoptosis_config import ApoptosisConfig
from engine.mechanisms.apoptosis_patterns import PATTERNS, deep, group_rates, parse_layer_rates, shallow
from engine.models.char_transformer import CharTransformer

# Selected groups per pattern and depth, written out by hand: ("m", i) FFN of block i, ("a", i) attention.
EXPECTED: dict[str, dict[int, set[tuple[str, int]]]] = {
    "standard": {1: {("m", 0)}, 2: {("m", 0), ("m", 1)}, 3: {("m", 0), ("m", 1), ("m", 2)},
                 4: {("m", 0), ("m", 1), ("m", 2), ("m", 3)}},
    "deep_only": {1: {("m", 0)}, 2: {("m", 1)}, 3: {("m", 1), ("m", 2)}, 4: {("m", 2), ("m", 3)}},
    "shallow_only": {1: {("m", 0)}, 2: {("m", 0)}, 3: {("m", 0), ("m", 1)}, 4: {("m", 0), ("m", 1)}},
    "alternating": {1: {("m", 0)}, 2: {("m", 0)}, 3: {("m", 0), ("m", 2)}, 4: {("m", 0), ("m", 2)}},
    "middle_only": {1: {("m", 0)}, 2: {("m", 0), ("m", 1)}, 3: {("m", 1)}, 4: {("m", 1), ("m", 2)}},
    "attention_only": {1: {("a", 0)}, 2: {("a", 0), ("a", 1)}, 3: {("a", 0), ("a", 1), ("a", 2)},
                       4: {("a", 0), ("a", 1), ("a", 2), ("a", 3)}},
    "attention_shallow": {1: {("a", 0)}, 2: {("a", 0)}, 3: {("a", 0), ("a", 1)}, 4: {("a", 0), ("a", 1)}},
    "attention_deep": {1: {("a", 0)}, 2: {("a", 1)}, 3: {("a", 1), ("a", 2)}, 4: {("a", 2), ("a", 3)}},
    "ffn_and_attention": {n: {(k, i) for k in "am" for i in range(n)} for n in (1, 2, 3, 4)},
    "shallow_ffn_deep_attention": {1: {("m", 0), ("a", 0)}, 2: {("m", 0), ("a", 1)},
                                   3: {("m", 0), ("m", 1), ("a", 1), ("a", 2)},
                                   4: {("m", 0), ("m", 1), ("a", 2), ("a", 3)}},
    "graduated": {1: {("m", 0)}, 2: {("m", 0), ("m", 1)}, 3: {("m", 0), ("m", 1), ("m", 2)},
                  4: {("m", 0), ("m", 1), ("m", 2), ("m", 3)}},
}


def groups(n: int) -> list[tuple[str, str, int]]:
    return [g for i in range(n) for g in ((f"blocks.{i}.attn", "attn", i), (f"blocks.{i}.mlp", "ffn", i))]


def test_every_pattern_is_specified() -> None:
    assert set(EXPECTED) == set(PATTERNS) and len(PATTERNS) == 11


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_pattern_selects_the_documented_groups(pattern: str, n: int) -> None:
    rates = group_rates(pattern, groups(n))
    assert set(rates) == {g for g, _, _ in groups(n)}
    chosen = {("a" if g.endswith("attn") else "m", int(g.split(".")[1])) for g, r in rates.items() if r > 0}
    assert chosen == EXPECTED[pattern][n]
    for g, r in rates.items():
        i = int(g.split(".")[1])
        want = (i + 1) / n if pattern == "graduated" else 1.0
        assert r == (want if r > 0 else 0.0)


def test_halves_for_odd_depth_share_the_middle_block() -> None:
    assert [i for i in range(5) if shallow(i, 5)] == [0, 1, 2]
    assert [i for i in range(5) if deep(i, 5)] == [2, 3, 4]
    assert [i for i in range(6) if shallow(i, 6)] == [0, 1, 2] and [i for i in range(6) if deep(i, 6)] == [3, 4, 5]


def test_layer_rates_replace_the_pattern_multiplier() -> None:
    rates = group_rates("standard", groups(4), "blocks.0.mlp=0.5, blocks.3.attn=2,blocks.1.mlp=0")
    assert rates["blocks.0.mlp"] == 0.5 and rates["blocks.3.attn"] == 2.0 and rates["blocks.1.mlp"] == 0.0
    assert rates["blocks.2.mlp"] == 1.0 and rates["blocks.2.attn"] == 0.0
    with pytest.raises(ConfigError, match=r"'layer_rates': 'blocks.4.mlp' .*valid: blocks.0.attn, blocks.0.mlp"):
        group_rates("standard", groups(4), "blocks.4.mlp=1")


@pytest.mark.parametrize("text", ["blocks.0.mlp", "=1", "blocks.0.mlp=x", "blocks.0.mlp=-1", "a=1,a=2",
                                  "blocks.0.mlp=nan"])
def test_bad_layer_rates_syntax(text: str) -> None:
    with pytest.raises(ConfigError, match="'layer_rates'"):
        parse_layer_rates(text)
    with pytest.raises(ValidationError) as info:
        ApoptosisConfig(layer_rates=text)
    assert isinstance(info.value.errors()[0]["ctx"]["error"], ConfigError)  # build_config reports it as is


def test_mechanism_checks_group_names_against_the_model() -> None:
    model = CharTransformer(11, 2, 2, 16, 8, generator=torch.Generator().manual_seed(0))
    mech = Apoptosis(model, ApoptosisConfig(layer_pattern="attention_deep", layer_rates="blocks.0.mlp=0.5"))
    assert mech.rates() == {"blocks.0.mlp": 0.5, "blocks.1.attn": 1.0}
    with pytest.raises(ConfigError, match=r"'layer_rates': 'blocks.3.attn' .*blocks.1.mlp"):
        Apoptosis(model, ApoptosisConfig(layer_rates="blocks.3.attn=2"))
    with pytest.raises(ValidationError, match="apoptosis_strategy"):
        ApoptosisConfig(apoptosis_strategy="sometimes")


def _sections() -> list[type[BaseModel]]:
    """Every config section class of the other families and shared settings that imports."""
    for mod in ("engine.config", "engine.data.images", "engine.experiments._plasticity_config",
                "engine.experiments._ndl_config", "engine.experiments._char_config"):
        try:
            importlib.import_module(mod)
        except ImportError:  # a family still being written elsewhere
            continue
    out, todo = [], list(Section.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls is not ApoptosisConfig and not any(
                f.annotation is ApoptosisConfig for f in cls.model_fields.values()):
            out.append(cls)
    return out


def test_flags_do_not_clash_with_other_families() -> None:
    # Every field becomes --<field>; a shared name must mean the same type.
    mine = ApoptosisConfig.model_fields
    shared: dict[str, Any] = {}
    for cls in _sections():
        for name, field in cls.model_fields.items():
            if name in mine:
                shared[f"{cls.__name__}.{name}"] = field.annotation
                assert field.annotation == mine[name].annotation, (cls.__name__, name)
    assert set(shared) == {"PlasticityConfig.utility_decay"}  # the one shared flag: same meaning, same type

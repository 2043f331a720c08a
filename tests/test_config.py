"""Typed config: flat keys, validation messages, YAML round trip, run ids."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from engine.config import RunConfig, build_config, config_hash, dump_yaml, flat_fields, load_yaml
from engine.errors import ConfigError
from engine.registry import experiment_names, get_experiment


def _count_leaves(cls: type[BaseModel]) -> int:
    n = 0
    for name, f in cls.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            n += _count_leaves(f.annotation)
        elif name != "family":
            n += 1
    return n


@pytest.mark.parametrize("experiment", experiment_names())
def test_flat_keys_are_unique_across_sections(experiment: str) -> None:
    expected = _count_leaves(RunConfig) + _count_leaves(get_experiment(experiment).config_cls)
    assert len(flat_fields(experiment)) == expected  # no key shadows another


@pytest.mark.parametrize(("flat", "key", "fragment"), [
    ({"lr": -1}, "lr", "greater than 0"),
    ({"batch_size": "abc"}, "batch_size", "integer"),
    ({"problem_type": "foo"}, "problem_type", "'spirals'"),
    ({"lrr": 1}, "lrr", "allowed: acc_threshold"),
    ({"experiment": "nope"}, "experiment", "allowed: seeds"),
    ({"train_frac": 1.5}, "train_frac", "less than 1"),
    ({"device": "tpu"}, "device", "'cuda'"),
    ({"seeds_per_layer": 40, "hidden_dim": 16}, "seeds_per_layer", "hidden_dim (16)"),
    ({"seed": 2**64}, "seed", "less than or equal"),
    ({"train_frac": 0.9999}, "train_frac", "both splits non-empty"),
    ({"metrics_linger": float("inf")}, "metrics_linger", "less than or equal"),
])
def test_bad_values_name_key_value_and_allowed(flat: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(flat)
    assert info.value.key == key
    assert fragment in str(info.value)
    assert repr(flat[key]) in str(info.value)


def test_yaml_round_trip_and_unknown_nested_key(tmp_path: Path) -> None:
    cfg = build_config({"lr": 0.01, "hidden_dim": 24, "problem_type": "moons"})
    dump_yaml(cfg, tmp_path / "config.yaml")
    assert load_yaml(tmp_path / "config.yaml") == cfg
    text = (tmp_path / "config.yaml").read_text().replace("hidden_dim: 24", "hidden_dim: 24\n  hiden: 3")
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match="hiden"):
        load_yaml(tmp_path / "config.yaml")


def test_run_id_ignores_telemetry_and_output_only() -> None:
    base = build_config({})
    assert config_hash(base) == config_hash(build_config({"metrics_port": 0, "output_dir": "x", "console": "off"}))
    assert config_hash(base) != config_hash(build_config({"lr": 0.01}))
    assert config_hash(base) != config_hash(build_config({"seed": 1}))

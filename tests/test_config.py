"""Typed config: flat keys, validation messages, YAML round trip, config hashes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from engine.config import RunConfig, build_config, config_hash, dump_yaml, flat_fields, load_yaml, validate_nested
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
    ({"experiment": "nope"}, "experiment", "allowed: apoptosis, heads, neurogenesis, plasticity, seeds"),
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


def test_config_hash_ignores_telemetry_and_output_only() -> None:
    base = build_config({})
    assert config_hash(base) == config_hash(build_config({"metrics_port": 0, "output_dir": "x", "console": "off"}))
    assert config_hash(base) != config_hash(build_config({"lr": 0.01}))
    assert config_hash(base) != config_hash(build_config({"seed": 1}))


def test_family_train_defaults_apply_and_user_values_win() -> None:
    cfg = build_config({"experiment": "plasticity"})
    # The plasticity streams default to the benchmark's SGD setting ...
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.batch_size) == ("sgd", 0.1, 8)
    # ... the seeds family keeps the shared defaults ...
    assert build_config({}).train.optimizer == "adam"
    # ... and a value the user gives wins over the family's default.
    assert build_config({"experiment": "plasticity", "lr": 0.03}).train.lr == 0.03
    # The resolved values are what config.yaml records, so a reload is identical.
    assert validate_nested(cfg.to_dict()) == cfg


def test_a_flag_shared_by_families_has_one_type() -> None:
    # The CLI builds one --option per flat key from the first family that has it,
    # so a key two families share must mean the same type in both.
    from engine.config import field_info

    seen: dict[str, tuple[str, object]] = {}
    for name in experiment_names():
        for key in flat_fields(name):
            ann = field_info(name, key).annotation
            first = seen.setdefault(key, (name, ann))
            assert first[1] == ann, (key, first, (name, ann))


def test_help_shows_each_familys_default_where_they_differ() -> None:
    from click.testing import CliRunner

    from engine.cli.main import cli

    text = " ".join(CliRunner().invoke(cli, ["--help"], terminal_width=400).output.split())
    assert "[default: neurogenesis: 0.2, plasticity: 0.1] (neurogenesis, plasticity only)" in text  # heldout_frac
    assert "[default: 0.003; apoptosis: 0.001, heads: 0.001, neurogenesis: 0.003, plasticity: 0.1]" in text  # lr

"""Run identity: a unique run_id per launch, the config hash shared, both stored in the run dir.

The units check engine.identity directly; the end-to-end test starts the same
config twice at once into one output directory and scrapes both endpoints.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from _e2e import Proc, read_json, start, stop, try_scrape, wait_for
from conftest import free_port

from engine.config import build_config, config_hash
from engine.errors import ConfigError
from engine.identity import (IDENTITY_NAME, RunIdentity, ensure_identity, legacy_identity, new_identity,
                             read_identity, write_identity)

CONFIG = {"warm_up_epochs": 40, "adaptation_epochs": 0, "console": "off", "tensorboard": False,
          "metrics_linger": 5.0, "seed": 11}
FLAGS = ["--warm_up_epochs", "40", "--adaptation_epochs", "0", "--console", "off", "--no_tensorboard",
         "--metrics_linger", "5", "--seed", "11"]


def test_new_identity_is_unique_and_label_safe() -> None:
    cfg = build_config({"seed": 11})
    ids = [new_identity(cfg) for _ in range(200)]
    assert {i.config_hash for i in ids} == {config_hash(cfg)}
    assert len({i.run_id for i in ids}) == 200
    for i in ids:
        assert re.fullmatch(rf"{i.config_hash}-[0-9a-f]{{6}}", i.run_id), i.run_id
    assert new_identity("abc").config_hash == "abc"
    assert legacy_identity(cfg) == RunIdentity(config_hash(cfg), config_hash(cfg))


def test_identity_round_trip_and_bad_files(tmp_path: Path) -> None:
    assert read_identity(tmp_path) is None
    ident = RunIdentity("0123456789-abcdef", "0123456789")
    write_identity(tmp_path, ident)
    assert read_identity(tmp_path) == ident
    assert json.loads((tmp_path / IDENTITY_NAME).read_text()) == {"run_id": "0123456789-abcdef",
                                                                  "config_hash": "0123456789"}
    for bad in ("{not json", '{"run_id": "x y"}', '["a"]', '{"run_id": "ab-cd", "config_hash": 3}'):
        (tmp_path / IDENTITY_NAME).write_text(bad)
        with pytest.raises(ConfigError) as exc:
            read_identity(tmp_path)
        assert exc.value.key.endswith(IDENTITY_NAME) and "run_id" in exc.value.allowed


def test_ensure_identity_keeps_a_stored_one_and_falls_back_for_old_runs(tmp_path: Path) -> None:
    fresh = ensure_identity(tmp_path / "a", "0123456789", legacy=False)
    assert fresh.run_id.startswith("0123456789-")
    assert ensure_identity(tmp_path / "a", "0123456789", legacy=True) == fresh  # stored: kept
    old = ensure_identity(tmp_path / "b", "0123456789", legacy=True)  # an older run's dir
    assert old == RunIdentity("0123456789", "0123456789") == read_identity(tmp_path / "b")


def _info(port: int) -> dict[str, str] | None:
    """Labels of plasticity_run_info at ``port`` once the run has started."""
    s = try_scrape(port)
    info = s.labelled("plasticity_run_info") if s is not None else []
    return info[0][0] if info else None


def test_two_launches_of_one_config_get_distinct_run_ids_and_one_config_hash(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ports = [free_port(), free_port()]
    procs: list[Proc] = []
    try:
        # Both at once, into one output directory: same config, same second.
        for i, port in enumerate(ports):
            procs.append(start([*FLAGS, "--metrics_port", str(port), "--output_dir", str(out)],
                               tmp_path / f"logs{i}"))
        live = [wait_for(f"run_info on {port}", lambda p=port: _info(p), timeout=90, proc=proc)
                for port, proc in zip(ports, procs)]
        for proc in procs:
            assert proc.wait(timeout=120) == 0, proc.err()[-3000:]
    finally:
        for proc in procs:
            stop(proc)
    expected_hash = config_hash(build_config(CONFIG))
    run_dirs = sorted((out / "runs").iterdir())
    assert len(run_dirs) == 2, run_dirs
    docs = [read_json(d / "metrics.json") for d in run_dirs]
    assert all(doc["status"] == "finished" for doc in docs)
    # Same config: one config hash, in metrics.json and in the live run_info series ...
    assert {doc["config_hash"] for doc in docs} == {info["config_hash"] for info in live} == {expected_hash}
    # ... but every launch its own run_id, directory and series.
    assert len({doc["run_id"] for doc in docs}) == 2
    assert {doc["run_id"] for doc in docs} == {info["run_id"] for info in live}
    for d, doc in zip(run_dirs, docs):
        assert d.name.endswith("_" + doc["run_id"])
        assert read_json(d / IDENTITY_NAME) == {"run_id": doc["run_id"], "config_hash": expected_hash}

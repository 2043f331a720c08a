"""Checkpoints load with ``weights_only=True``: resuming someone else's run directory cannot run code.

Real checkpoints of every family hold only tensors and plain values and
restore the global RNG states exactly; a checkpoint carrying a pickled object
is refused through the real CLI (one error line, exit 2) without running it;
a checkpoint of another format is a clear error.
"""

from __future__ import annotations

import math
import os
import random
import shlex
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from _char import TINY_APOPTOSIS, TINY_HEADS
from _e2e import Proc, read_json, run, run_dir_in, start, stop

from engine.errors import ConfigError
from engine.training.checkpoint import (CHECKPOINT_NAME, FORMAT_VERSION, CheckpointError, check_plain,
                                        load_checkpoint, rng_state, save_checkpoint, set_rng_state)

COMMON = ["--metrics_port", "0", "--no_tensorboard", "--console", "plain", "--threads", "1", "--seed", "5"]
PLASTICITY = ["--experiment", "plasticity", "--per_class", "20", "--n_tasks", "3", "--hidden_units", "16",
              "--probe_size", "150", "--diagnostics_every", "10", "--maturity_threshold", "10",
              "--replacement_rate", "0.01", "--redo_every", "20", "--redo_batch", "64"]
# One small run per family (and per plasticity mechanism: each keeps its own statistics).
FAMILIES: dict[str, list[str]] = {
    "seeds": ["--experiment", "seeds", "--warm_up_epochs", "2", "--adaptation_epochs", "2"],
    "neurogenesis": ["--experiment", "neurogenesis", "--hidden_sizes", "16,8", "--base_epochs", "2",
                     "--class_order", "0,2,3", "--plasticity_epochs", "2", "--stability_epochs", "2",
                     "--units_per_step", "2", "--growth_cap", "4", "--eval_every", "7"],
    "plasticity_cbp": PLASTICITY + ["--mechanism", "cbp", "--momentum", "0.9"],
    "plasticity_redo": PLASTICITY + ["--mechanism", "redo", "--redo_tau", "0.5"],
    "apoptosis": [*TINY_APOPTOSIS, "--max_iters", "30"],
    "heads": [*TINY_HEADS, "--max_iters", "80"],  # pruning rounds from ~step 50
}


@pytest.fixture(scope="module")
def family_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished run directory (with its checkpoint) of every family, run together."""
    tmp = tmp_path_factory.mktemp("families")
    procs: dict[str, Proc] = {}
    try:
        for name, flags in FAMILIES.items():
            procs[name] = start(COMMON + flags + ["--output_dir", str(tmp / name)], tmp / f"logs_{name}")
        out = {}
        for name, proc in procs.items():
            assert proc.wait(timeout=180) == 0, (name, proc.err()[-3000:])
            run_dir = run_dir_in(tmp / name)
            assert run_dir is not None and (run_dir / CHECKPOINT_NAME).is_file(), name
            out[name] = run_dir
        return out
    finally:
        for proc in procs.values():
            stop(proc)


@pytest.fixture
def keep_global_rngs() -> Iterator[None]:
    """Tests here reseed the global RNGs; give the next test the state it would have had."""
    py, npy, pt = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(pt)


def _same(a: Any, b: Any) -> bool:
    """Deep equality where tensors compare by dtype and values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and bool(torch.equal(a, b)))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)  # e.g. a dormant seed's losses not measured yet
    return type(a) is type(b) and a == b


def _numpy_state_equal(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2:] == b[2:]


# -- (a) real checkpoints ---------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_real_checkpoint_loads_weights_only_and_restores_rngs(family_runs: dict[str, Path], family: str,
                                                              keep_global_rngs: None) -> None:
    path = family_runs[family] / CHECKPOINT_NAME
    raw = torch.load(path, weights_only=True)  # raises on anything but tensors and plain values
    assert raw["format"] == FORMAT_VERSION
    check_plain(raw)  # and the save-time check agrees
    assert set(raw) >= {"rng", "trainer", "experiment"}
    payload = load_checkpoint(family_runs[family], torch.device("cpu"))
    assert payload is not None and _same(payload, raw)

    set_rng_state(payload["rng"])
    assert _same(rng_state(), payload["rng"])  # every generator restored exactly
    py = payload["rng"]["python"]
    assert random.getstate() == (py["version"], tuple(py["internal"]), py["gauss"])
    npy = np.random.get_state()
    assert npy[0] == payload["rng"]["numpy"]["bit_generator"]
    assert np.array_equal(npy[1], payload["rng"]["numpy"]["key"].numpy())
    assert torch.equal(torch.get_rng_state(), payload["rng"]["torch"])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_real_checkpoint_resumes_through_the_cli(family_runs: dict[str, Path], family: str,
                                                 tmp_path: Path) -> None:
    """Every family's state loads back from what weights_only rebuilt (a finished run ends at once)."""
    run_dir = tmp_path / "run"
    shutil.copytree(family_runs[family], run_dir)
    before = read_json(run_dir / "metrics.json")
    r = run(["--resume", str(run_dir)], timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "resumed" in (run_dir / "run.log").read_text()
    after = read_json(run_dir / "metrics.json")
    assert before is not None and after is not None and after["status"] == "finished"
    assert after["metrics"]["steps"] == before["metrics"]["steps"]


def test_rng_states_round_trip_exactly(tmp_path: Path, keep_global_rngs: None) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    # Leave a cached Gaussian in Python's and NumPy's generators: part of the state too.
    random.gauss(0.0, 1.0)
    np.random.standard_normal()
    saved_py, saved_np, saved_torch = random.getstate(), np.random.get_state(), torch.get_rng_state()
    assert saved_py[2] is not None and saved_np[3] == 1
    save_checkpoint(tmp_path, {})
    expected = (random.random(), random.gauss(0.0, 1.0), np.random.standard_normal(3), torch.rand(3))

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    payload = load_checkpoint(tmp_path, torch.device("cpu"))
    assert payload is not None
    set_rng_state(payload["rng"])
    assert random.getstate() == saved_py
    assert _numpy_state_equal(np.random.get_state(), saved_np)
    assert torch.equal(torch.get_rng_state(), saved_torch)
    again = (random.random(), random.gauss(0.0, 1.0), np.random.standard_normal(3), torch.rand(3))
    assert again[:2] == expected[:2]
    assert np.array_equal(again[2], expected[2]) and torch.equal(again[3], expected[3])


def test_save_refuses_values_weights_only_would_refuse(tmp_path: Path) -> None:
    # np.float64 is a float subclass: it pickles as a NumPy object and would be refused on load.
    for bad, where in [({"a": [np.zeros(2)]}, "['a'][0]"), ({"b": {"c": np.float64(1.0)}}, "['b']['c']"),
                       ({"d": object()}, "['d']")]:
        with pytest.raises(TypeError, match=r"weights_only") as info:
            save_checkpoint(tmp_path, {"experiment": bad})
        assert f"checkpoint['experiment']{where}" in str(info.value)
        assert not (tmp_path / CHECKPOINT_NAME).exists()  # nothing half-safe written


# -- (b) a hostile checkpoint ------------------------------------------------------------


class _Hostile:
    """Unpickling this runs a shell command (what a crafted checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _hostile_checkpoint(path: Path, marker: Path) -> None:
    """A checkpoint that looks right but carries a code-running object."""
    torch.save({"format": FORMAT_VERSION, "rng": rng_state(), "trainer": {"epoch": 0},
                "experiment": {"payload": _Hostile(marker)}}, path)


def test_hostile_checkpoint_is_live(tmp_path: Path) -> None:
    """Guard for the test below: the crafted file really runs its command when fully unpickled."""
    marker = tmp_path / "ran"
    _hostile_checkpoint(tmp_path / "hostile.pt", marker)
    torch.load(tmp_path / "hostile.pt", weights_only=False)
    assert marker.exists()


def test_hostile_checkpoint_is_refused_by_the_cli(family_runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "someone_elses_run"
    shutil.copytree(family_runs["seeds"], run_dir)
    marker = tmp_path / "pwned"
    _hostile_checkpoint(run_dir / CHECKPOINT_NAME, marker)
    r = run(["--resume", str(run_dir)], timeout=120)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and r.stdout == ""
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert errors[0].startswith(f"error: invalid value for 'resume': {str(run_dir)!r} (checkpoint.pt holds "
                                "objects other than tensors and plain values (")
    assert "system" in errors[0] and "refusing to load it" in errors[0]
    assert not marker.exists()  # never executed


def test_hostile_checkpoint_is_refused_in_process(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _hostile_checkpoint(tmp_path / CHECKPOINT_NAME, marker)
    with pytest.raises(CheckpointError, match="objects other than tensors and plain values") as info:
        load_checkpoint(tmp_path, torch.device("cpu"))
    assert isinstance(info.value, ConfigError) and info.value.key == "resume"
    assert not marker.exists()


def test_unreadable_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"\x80\x04K\x01.")  # a pickle, but not a torch file
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path, torch.device("cpu"))


# -- (c) other formats ---------------------------------------------------------------------


def test_wrong_format_version_is_a_clear_error(family_runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(family_runs["seeds"], run_dir)
    payload = torch.load(run_dir / CHECKPOINT_NAME, weights_only=True)
    torch.save({**payload, "format": FORMAT_VERSION + 1}, run_dir / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match=rf"has format {FORMAT_VERSION + 1}, but this engine reads only "
                                              rf"format {FORMAT_VERSION}"):
        load_checkpoint(run_dir, torch.device("cpu"))
    r = run(["--resume", str(run_dir)], timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: invalid value for 'resume': {str(run_dir)!r} (checkpoint.pt has format "
                      f"{FORMAT_VERSION + 1}, but this engine reads only format {FORMAT_VERSION}: resume it "
                      "with the engine version that wrote it, or start a new run)"]


def test_format_1_checkpoint_is_named_as_such(tmp_path: Path) -> None:
    """Format 1 pickled NumPy's RNG state: refused (NumPy globals), with a hint that it is just old."""
    torch.save({"format": 1, "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                                     "torch": torch.get_rng_state()}, "trainer": {}, "experiment": {}},
               tmp_path / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match=r"numpy.*format-1 checkpoint from an older engine"):
        load_checkpoint(tmp_path, torch.device("cpu"))


def test_no_checkpoint_is_none(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path, torch.device("cpu")) is None

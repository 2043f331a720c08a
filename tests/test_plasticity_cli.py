"""The plasticity family through the real CLI: one smoke run per mechanism / baseline
(and the regression stream), config errors, and SIGKILL + --resume == uninterrupted."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _e2e import Proc, read_json, read_jsonl, run, run_dir_in, start, stop, wait_for

from engine.config import build_config
from engine.errors import ConfigError

BASE = ["--experiment", "plasticity", "--metrics_port", "0", "--no_tensorboard", "--console", "plain",
        "--threads", "1", "--seed", "3"]
TINY = ["--per_class", "20", "--n_tasks", "4", "--hidden_units", "16", "--probe_size", "150",
        "--diagnostics_every", "10", "--maturity_threshold", "10", "--replacement_rate", "0.01",
        "--redo_every", "20", "--redo_batch", "64"]
# The cbp case is also run A of the resume test (momentum, shrink-and-perturb noise and the
# adaptable utility exercise every piece of saved state); process start-up dominates these runs.
RESUME = ["--mechanism", "cbp", "--n_tasks", "30", "--utility", "adaptable_contribution", "--shrink", "1e-4",
          "--perturb", "1e-4", "--momentum", "0.9"]
CASES: dict[str, list[str]] = {
    "none": ["--mechanism", "none"],
    "cbp": RESUME,
    "redo": ["--mechanism", "redo", "--redo_tau", "0.5"],
    "l2": ["--mechanism", "none", "--weight_decay", "0.01"],
    "shrink_perturb": ["--mechanism", "none", "--shrink", "0.001", "--perturb", "0.001"],
    "class_incremental": ["--mechanism", "redo", "--stream", "class_incremental", "--initial_classes", "3",
                          "--tasks_per_increment", "1"],
    "regression": ["--mechanism", "cbp", "--stream", "slow_regression", "--task_samples", "200",
                   "--hidden_units", "5", "--hidden_layers", "1", "--lr", "0.01"],
}
LAYER_METRICS = ("layer_effective_rank", "layer_stable_rank", "layer_approximate_rank", "layer_dead_ratio",
                 "layer_dormant_ratio", "layer_weight_abs_mean", "layer_grad_norm", "units_replaced_total")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every case, started together (the box has two cores; each run takes ~2 s of CPU)."""
    tmp = tmp_path_factory.mktemp("smoke")
    procs: dict[str, Proc] = {}
    try:
        for name, flags in CASES.items():
            procs[name] = start(BASE + TINY + flags + ["--output_dir", str(tmp / name)], tmp / f"logs_{name}")
        out = {}
        for name, proc in procs.items():
            assert proc.wait(timeout=120) == 0, (name, proc.err()[-3000:])
            run_dir = run_dir_in(tmp / name)
            assert run_dir is not None
            out[name] = run_dir
        return out
    finally:
        for proc in procs.values():
            stop(proc)


def _samples(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(run_dir / "samples.jsonl")


def _last(samples: list[dict[str, Any]], metric: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for s in samples:
        if s["metric"] == metric:
            out[tuple(s["labels"])] = s["value"]
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_smoke_run(smoke: dict[str, Path], case: str) -> None:
    run_dir = smoke[case]
    doc = read_json(run_dir / "metrics.json")
    assert doc is not None and doc["status"] == "finished"
    m = doc["metrics"]
    n = 30 if case == "cbp" else 4
    assert m["epochs"] == n and math.isfinite(m["val_loss"]) and math.isfinite(m["online_loss"])
    history = read_jsonl(run_dir / "history.jsonl")
    assert [h["phase"] for h in history] == ["stream"] * n
    assert [h["stream_task"] for h in history] == list(range(n))
    samples = _samples(run_dir)
    layers = 1 if case == "regression" else 3
    for metric in LAYER_METRICS:
        last = _last(samples, metric)
        assert sorted(last) == [(f"layers.{i}",) for i in range(layers)], (metric, last)
        assert all(math.isfinite(v) and v >= 0 for v in last.values()), (metric, last)
    units = 5 if case == "regression" else 16
    for v in _last(samples, "layer_effective_rank").values():
        assert 0 <= v <= units
    for metric in ("layer_dead_ratio", "layer_dormant_ratio"):
        assert all(0 <= v <= 1 for v in _last(samples, metric).values())
    replaced = sum(_last(samples, "units_replaced_total").values())
    if case in ("cbp", "redo", "regression", "class_incremental"):
        assert replaced > 0, case
    else:
        assert replaced == 0, case
    assert _last(samples, "diagnostics_seconds_total")[()] > 0
    tasks = [v for s in samples if s["metric"] == "stream_task" for v in [s["value"]]]
    assert tasks == list(range(n))
    if case == "regression":  # no accuracy on a regression stream
        assert "val_accuracy" not in m and not _last(samples, "online_accuracy_ratio")
    else:
        assert 0 <= m["val_accuracy"] <= 1 and 0 <= m["online_accuracy"] <= 1
        assert len(_last(samples, "online_accuracy_ratio")) == 1
    arts = run_dir / "artifacts"
    for name in ("tasks.csv", "diagnostics.csv", "units.npz", "curves.png"):
        assert (arts / name).stat().st_size > 0, name
    assert len((arts / "tasks.csv").read_text().splitlines()) == n + 1
    npz = np.load(arts / "units.npz")
    assert npz["layers.0/activation_abs_mean"].shape == (units,)
    assert ("layers.0/cbp_utility" in npz) == case.startswith(("cbp", "regression"))
    manifest = read_json(run_dir / "manifest.json")
    assert manifest is not None and len(manifest["sha256"]) == 64
    if case == "class_incremental":  # 3 classes, then one more per task
        assert [h["stream_classes"] for h in history] == [3, 4, 5, 6]
        assert manifest["tasks_per_cycle"] == 8 and all(0 <= h["val_new_class_accuracy"] <= 1 for h in history)
    events = read_jsonl(run_dir / "events.jsonl")
    assert events  # the run's end at least
    neurons = read_jsonl(run_dir / "neurons.jsonl")
    assert len(neurons[-1]["layers.0/activation_abs_mean"]) == units


def test_mechanisms_differ_from_backprop(smoke: dict[str, Path]) -> None:
    # the switches really change training (same seed, same data, same init)
    finals = {c: read_json(smoke[c] / "metrics.json")["metrics"]["online_loss"] for c in CASES}  # type: ignore[index]
    assert len({round(v, 9) for v in finals.values()}) == len(finals), finals


def test_config_errors(tmp_path: Path) -> None:
    r = run(BASE + ["--slow_bits", "20", "--output_dir", str(tmp_path)], timeout=60)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "slow_bits" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()
    for flat, key in (({"perturb": 0.01}, "shrink"), ({"mechanism": "dropout"}, "mechanism"),
                      ({"stream": "slow_regression", "probe_size": 5000}, "probe_size"),
                      ({"stream": "slow_regression", "task_samples": 4, "heldout_frac": 0.1}, "heldout_frac")):
        with pytest.raises(ConfigError) as err:
            build_config({"experiment": "plasticity", **flat})
        assert err.value.key == key, (flat, err.value)


def test_family_defaults() -> None:
    cfg = build_config({"experiment": "plasticity"})
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.batch_size, cfg.train.momentum) == ("sgd", 0.1, 8, 0.0)
    assert build_config({"experiment": "plasticity", "lr": 0.01}).train.lr == 0.01


def test_sigkill_then_resume_equals_uninterrupted(tmp_path: Path, smoke: dict[str, Path]) -> None:
    flags = BASE + TINY + RESUME
    b_proc: Proc | None = None
    try:
        b_proc = start(flags + ["--output_dir", str(tmp_path / "b")], tmp_path / "logs_b")
        b_dir = wait_for("run B's dir", lambda: run_dir_in(tmp_path / "b"), timeout=60, proc=b_proc)
        wait_for("three tasks", lambda: len(read_jsonl(b_dir / "history.jsonl")) >= 3, timeout=90,
                 interval=0.01, proc=b_proc)
        os.kill(b_proc.pid, signal.SIGKILL)
        assert b_proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        stop(b_proc)
    killed = read_json(b_dir / "metrics.json")
    assert killed is not None and killed["status"] == "running"
    assert 3 <= len(read_jsonl(b_dir / "history.jsonl")) < 30
    r = run(["--resume", str(b_dir)], timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    a_dir = smoke["cbp"]
    ma, mb = (read_json(d / "metrics.json")["metrics"] for d in (a_dir, b_dir))  # type: ignore[index]
    for key in ("val_accuracy", "val_loss", "train_loss", "online_loss", "online_accuracy", "steps", "grad_norm"):
        assert ma[key] == pytest.approx(mb[key], abs=1e-9, rel=0), key
    assert [h["epoch"] for h in read_jsonl(b_dir / "history.jsonl")] == list(range(30))
    assert (a_dir / "artifacts" / "tasks.csv").read_text() == (b_dir / "artifacts" / "tasks.csv").read_text()
    diag = lambda d: [  # noqa: E731 - diagnostics rows without the (timing-dependent) seconds
        (s["step"], s["metric"], s["labels"], s["value"]) for s in _samples(d)
        if s["metric"] != "diagnostics_seconds_total"]
    assert diag(a_dir)[-30:] == diag(b_dir)[-30:]
    assert sum(_last(_samples(b_dir), "units_replaced_total").values()) > 0

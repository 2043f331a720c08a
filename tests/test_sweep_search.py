"""Bayesian (Optuna) search sweeps: spec validation, real trials pruned from their history, --parallel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _e2e import run
from _sweep_search import FLAGS, PRUNING_SEARCH, TINY, assert_study_matches_summary, study_trials, summary_rows, yaml_text
from engine.cli.main import main
from engine.sweep.pruning import JsonlTail, PruneWatch

GOOD = """
method: bayes
n_trials: 2
parameters:
  lr: {type: float, low: 0.001, high: 0.1, log: true}
  hidden_dim: {type: int, low: 4, high: 16}
objective: {metric: val_loss, direction: minimize}
"""


@pytest.mark.parametrize(("search", "key", "shown"), [
    (GOOD.replace("low: 0.001, high: 0.1", "low: 0.1, high: 0.01"), "search.parameters.lr.low", "must be <= high"),
    (GOOD.replace("type: float", "type: normal"), "search.parameters.lr.type", "allowed: int, float, categorical"),
    (GOOD.replace("low: 0.001", "low: 0"), "search.parameters.lr.low", "must be > 0 with log: true"),
    (GOOD.replace("{type: int, low: 4, high: 16}", "{type: categorical, choices: []}"),
     "search.parameters.hidden_dim.choices", "a non-empty list"),
    (GOOD.replace("metric: val_loss", "metric: val_los"), "search.objective.metric", "not a metric any family"),
    (GOOD.replace("n_trials: 2", "n_trials: 0"), "search.n_trials", "greater than or equal to 1"),
    (GOOD.replace("n_trials: 2\n", ""), "search.n_trials", "required for method bayes"),
    (GOOD.replace("method: bayes", "method: annealing"), "search.method", "'grid', 'random' or 'bayes'"),
    (GOOD.replace("n_trials: 2", "n_trial: 2"), "search.n_trial", "unknown key; allowed: method, n_trials"),
    (GOOD.replace("direction: minimize", "direction: down"), "search.objective.direction", "'minimize'"),
    (GOOD.replace("hidden_dim:", "hidden_dimm:"), "hidden_dimm", "unknown key"),
    (GOOD.replace("low: 4", "low: 0"), "hidden_dim", "greater than or equal to 1"),
    (GOOD.replace("low: 4, high: 16", "low: 4.5, high: 16"), "search.parameters.hidden_dim.low", "an integer"),
    (GOOD.replace("method: bayes", "method: grid"), "search.parameters.lr.step", "required for a float"),
    (GOOD + "sampler: {name: random}\n", "search.sampler.name", "method bayes uses sampler tpe"),
    (GOOD + "pruner: {name: hyperband}\n", "search.pruner.name", "'median' or 'none'"),
])
def test_bad_search_spec_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], search: str,
                                               key: str, shown: str) -> None:
    (tmp_path / "a.yaml").write_text(yaml_text("a", {"seed": 1}, GOOD))
    (tmp_path / "b.yaml").write_text(yaml_text("b", {"warm_up_epochs": 2}, search))
    out = tmp_path / "out"
    assert main(["-s", str(tmp_path), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: invalid value for '{key}'") and shown in err, err
    assert not out.exists()  # every file is validated before the first (valid) one starts


def test_search_sweep_takes_one_value_per_fixed_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "s.yaml").write_text(yaml_text("s", {}, GOOD) + "seed: [1, 2]\n")
    assert main(["-s", str(tmp_path / "s.yaml"), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "'seed'" in err and "give ranges under search.parameters" in err


def test_a_key_both_fixed_and_searched_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "s.yaml").write_text(yaml_text("s", {"hidden_dim": 8}, GOOD))
    assert main(["-s", str(tmp_path / "s.yaml"), "--output_dir", str(tmp_path / "out")]) == 2
    assert "'hidden_dim'" in capsys.readouterr().err and not (tmp_path / "out").exists()


class _Recorder:
    def __init__(self, prune_at: int) -> None:
        self.reported: list[tuple[int, float]] = []
        self.prune_at = prune_at

    def report(self, value: float, step: int) -> None:
        self.reported.append((step, value))

    def should_prune(self) -> bool:
        return self.reported[-1][0] >= self.prune_at


def test_watch_reads_complete_rows_once_and_rereads_a_rewound_history(tmp_path: Path) -> None:
    hist = tmp_path / "history.jsonl"
    rec = _Recorder(prune_at=3)
    watch = PruneWatch(rec, hist, "val_loss")
    assert watch.poll() is False  # no file yet
    hist.write_text('{"epoch": 0, "val_loss": 1.0}\n{"epoch": 1, "val_loss": "nan"}\n{"epoch": 2, "val_')
    assert watch.poll() is False and rec.reported == [(0, 1.0)]  # NaN skipped, partial line waits
    with hist.open("a") as fh:
        fh.write('loss": 0.5}\n')
    assert watch.poll() is False and rec.reported == [(0, 1.0), (2, 0.5)]
    # A resume rewinds the file by an atomic rewrite: read from the start, epochs reported once.
    tmp = tmp_path / "h.tmp"
    tmp.write_text('{"epoch": 0, "val_loss": 1.0}\n{"epoch": 3, "val_loss": 0.4}\n')
    tmp.replace(hist)
    assert watch.poll() is True and watch.pruned_at == (3, 0.4)
    assert rec.reported == [(0, 1.0), (2, 0.5), (3, 0.4)]
    assert JsonlTail(hist).rows()[1] == {"epoch": 3, "val_loss": 0.4}


def test_real_bayes_search_prunes_a_trial_and_study_agrees_with_summary(tmp_path: Path) -> None:
    sweep = tmp_path / "prune.yaml"
    epochs = 200
    sweep.write_text(yaml_text("prune", {**TINY, "warm_up_epochs": epochs}, PRUNING_SEARCH))
    out = tmp_path / "out"
    proc = run(["-s", str(sweep), "--output_dir", str(out), *FLAGS], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = (out / "sweeps").iterdir()
    rows = assert_study_matches_summary(sweep_dir, 3)
    assert [r["status"] for r in rows] == ["finished", "pruned", "finished"], rows
    assert [float(r["lr"]) for r in rows] == [0.05, 1e-5, 0.05]
    pruned = rows[1]
    assert pruned["error"].startswith("pruned at epoch ")
    run_dir = sweep_dir / pruned["run_dir"]
    # Stopped by SIGTERM through its handle: the trial itself ended "interrupted", early.
    doc = json.loads((run_dir / "metrics.json").read_text())
    assert doc["status"] == "interrupted" and doc["metrics"]["epochs"] < epochs
    for r in (rows[0], rows[2]):
        doc = json.loads((sweep_dir / r["run_dir"] / "metrics.json").read_text())
        assert doc["status"] == "finished" and float(r["objective"]) == doc["metrics"]["val_loss"]
    assert "(1 pruned)" in proc.stderr and "best trial 00" in proc.stderr
    assert "trial 002 pruned at epoch" in proc.stderr
    assert (sweep_dir / "sweep_state.json").is_file() and (sweep_dir / "sweep_spec.yaml").is_file()
    assert list((out / "file_sd").glob("*.json")) == []  # every registration removed at the end


def test_bayes_search_runs_trials_in_parallel(tmp_path: Path) -> None:
    sweep = tmp_path / "par.yaml"
    fixed = {k: v for k, v in TINY.items() if k != "hidden_dim"}  # searched here
    # No pruner: this test is about two slots; whether a trial is pruned depends on timing.
    search = GOOD.replace("n_trials: 2", "n_trials: 3") + "pruner: {name: none}\n"
    sweep.write_text(yaml_text("par", {**fixed, "warm_up_epochs": 5}, search))
    out = tmp_path / "out"
    proc = run(["-s", str(sweep), "--output_dir", str(out), "--parallel", "2", *FLAGS], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = (out / "sweeps").iterdir()
    rows = sorted(summary_rows(sweep_dir), key=lambda r: int(r["trial"]))
    assert [r["status"] for r in rows] == ["finished"] * 3
    assert [t.state.name for t in study_trials(sweep_dir)] == ["COMPLETE"] * 3
    first, second = (sweep_dir / rows[0]["run_dir"], sweep_dir / rows[1]["run_dir"])
    # Two slots: trial 2 was asked and started before trial 1 ended.
    assert (second / "identity.json").stat().st_mtime <= (first / "metrics.json").stat().st_mtime
    assert len({r["run_id"] for r in rows}) == 3 and all(4 <= int(r["hidden_dim"]) <= 16 for r in rows)


def test_grid_method_asks_every_grid_point_once(tmp_path: Path) -> None:
    from engine.sweep.plan import make_source, plan_sweep

    block = {"method": "grid", "parameters": {"lr": {"type": "float", "low": 0.01, "high": 0.03, "step": 0.01},
                                              "hidden_dim": {"type": "int", "low": 4, "high": 8, "step": 4},
                                              "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]}},
             "objective": {"metric": "val_accuracy", "direction": "maximize"}}
    plan = plan_sweep("g", {"search": block, "seed": 1}, {}, None)
    assert plan.n_trials == 3 * 2 * 2
    source = make_source(plan, tmp_path)
    points = []
    while (trial := source.next_trial()) is not None:
        points.append((trial.params["lr"], trial.params["hidden_dim"], trial.params["optimizer"]))
        assert trial.config.train.seed == 1 and trial.index == len(points)
    assert source.exhausted() and len(set(points)) == 12
    assert {p[0] for p in points} == {0.01, 0.02, 0.03} and {p[1] for p in points} == {4, 8}
    assert (tmp_path / "study.db").is_file()


def test_failed_and_diverged_trials_are_fail_in_the_study(tmp_path: Path) -> None:
    # Fault drills: at step 2 one trial raises (failed), the other's loss turns NaN at step 4 (diverged).
    search = """
method: grid
parameters:
  fault_exception_step: {type: categorical, choices: [2, -1]}
objective: {metric: val_loss, direction: minimize}
pruner: none
"""
    sweep = tmp_path / "faults.yaml"
    sweep.write_text(yaml_text("faults", {**TINY, "warm_up_epochs": 3, "fault_nan_step": 4}, search))
    out = tmp_path / "out"
    proc = run(["-s", str(sweep), "--output_dir", str(out), "--parallel", "2", *FLAGS], timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]  # a failed trial fails the sweep
    (sweep_dir,) = (out / "sweeps").iterdir()
    rows = sorted(summary_rows(sweep_dir), key=lambda r: int(r["trial"]))
    status = {r["fault_exception_step"]: r["status"] for r in rows}
    assert status == {"2": "failed", "-1": "diverged"}, rows
    trials = study_trials(sweep_dir)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert {t.params["fault_exception_step"]: t.user_attrs["status"] for t in trials} == {2: "failed",
                                                                                           -1: "diverged"}
    assert all(r["objective"] == "" for r in rows) and "best trial" not in proc.stderr

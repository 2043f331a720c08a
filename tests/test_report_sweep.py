"""Sweep reports from a hand-made sweep directory (the browser test runs a real sweep).

Twelve trials (mechanism x lr x seed) with known final losses and loss
histories, one of them failed with no metrics: rankings, stability, best per
mechanism, groups with bootstrap intervals and Welch's test.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from engine.report import is_sweep_dir, write_report
from engine.report.load import Trial, load_sweep
from engine.report.sweep_report import STABILITY, context
from engine.sweep.summary import SummaryCsv

MECHANISMS = {"cbp": 0.30, "redo": 0.50, "none": 0.80}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    summary = SummaryCsv(root / "sweep_summary.csv", ["mechanism", "lr", "seed", "hidden_dim"])
    trial = 0
    for mech, base in MECHANISMS.items():
        for lr in (0.1, 0.01):
            for seed in (1, 2):
                trial += 1
                run_dir = root / f"run_{trial:03d}_h{trial}"
                run_dir.mkdir()
                params = {"mechanism": mech, "lr": lr, "seed": seed, "hidden_dim": 16}
                (run_dir / "config.yaml").write_text(yaml.safe_dump(
                    {"experiment": "plasticity", "train": {"lr": lr, "seed": seed},
                     "telemetry": {"metrics_port": 0}, "family": {"mechanism": mech, "hidden_dim": 16}}))
                failed = trial == 12
                final = base + (0.05 if lr == 0.1 else 0.0) + 0.01 * seed
                wobble = 0.001 * trial  # later trials are less stable
                losses = [1.0, 0.9] + [final + (wobble if e % 2 else -wobble) for e in range(6)]
                (run_dir / "history.jsonl").write_text("".join(
                    json.dumps({"epoch": e, "train_loss": v + 0.1, "val_loss": v}) + "\n"
                    for e, v in enumerate(losses)))
                row = {"trial": trial, "run_id": f"h{trial}-x", "config_hash": f"h{trial}", "run_dir": str(run_dir),
                       "status": "failed" if failed else "finished", "error": "boom" if failed else "", **params}
                if not failed:
                    row.update(val_loss=losses[-1], val_accuracy=1 - losses[-1], train_loss=losses[-1] + 0.1)
                summary.append(row)
    return root


def test_trials_params_and_stability_are_read(sweep_dir: Path) -> None:
    assert is_sweep_dir(sweep_dir)
    trials = load_sweep(sweep_dir)
    assert len(trials) == 12
    assert trials[0].params == {"mechanism": "cbp", "lr": "0.1", "seed": "1", "hidden_dim": "16"}
    assert trials[0].losses[-1] == pytest.approx(0.36 + 0.001)


def test_rankings_best_per_mechanism_and_groups(sweep_dir: Path) -> None:
    ctx = context(sweep_dir, load_sweep(sweep_dir))
    assert ctx["params"] == ["mechanism", "lr", "seed"] and ctx["fixed"] == {"hidden_dim": "16"}
    assert ctx["metrics"] == ["val_loss", "val_accuracy", "train_loss", STABILITY]
    assert ctx["objective"] == "val_loss" and ctx["categorical"]
    rankings = dict(ctx["rankings"])
    by_loss = rankings["Top 10 by final val_loss"]
    assert len(by_loss) == 10 and [r["trial"] for r in by_loss[:3]] == ["3", "4", "1"]  # cbp, lr 0.01 first
    assert "12" not in [r["trial"] for r in by_loss]  # failed: no final loss
    assert [r["trial"] for r in rankings["Top 10 by final val_accuracy"][:2]] == ["3", "4"]
    stability = next(rows for title, rows in ctx["rankings"] if title.startswith(f"Top 10 by final {STABILITY}"))
    assert [r["trial"] for r in stability[:3]] == ["1", "2", "3"]  # the smallest wobble
    (best,) = ctx["best"]
    assert best["param"] == "mechanism"
    assert {value: row["trial"] for value, row in best["rows"]} == {"cbp": "3", "none": "11", "redo": "7"}
    groups = {(g["param"], g["metric"]): g for g in ctx["groups"]}
    assert ("seed", "val_loss") not in groups  # seeds are what the groups pool over
    mech = groups[("mechanism", "val_loss")]
    assert [(s.value, s.n) for s in mech["stats"]] == [("cbp", 4), ("none", 3), ("redo", 4)]
    cbp = mech["stats"][0]
    assert cbp.mean == pytest.approx((0.36 + 0.37 + 0.31 + 0.32) / 4, abs=0.01)
    assert cbp.ci is not None and cbp.ci[0] <= cbp.mean <= cbp.ci[1]
    assert (mech["welch"].a, mech["welch"].b) == ("cbp", "redo") and mech["welch"].pvalue < 0.01
    lr = groups[("lr", "val_loss")]
    assert lr["welch"] is not None and {lr["welch"].a, lr["welch"].b} == {"0.1", "0.01"}
    assert set(ctx["figures"]) == {"effect0", "effect1"}  # mechanism and lr, not the seed


def test_the_sweep_page(sweep_dir: Path) -> None:
    html = write_report(sweep_dir).read_text()
    assert (sweep_dir / "plotly.min.js").is_file()
    assert len(re.findall(r"<tr>\s*<td class=\"num\" data-sort=\"\d+\">", html.split('id="rank1"')[0])) == 12
    assert 'data-param="mechanism" data-metric="val_loss"' in html
    assert "Welch's t-test, mechanism = cbp vs redo" in html
    assert '<span class="status failed" title="boom">failed</span>' in html
    assert 'href="run_001_h1/"' in html  # trials without a report of their own link to their directory
    assert not re.findall(r'(?:src|href)="(?:https?:)?//', html)


def test_a_summary_whose_trial_directories_are_gone(sweep_dir: Path, tmp_path: Path) -> None:
    with (sweep_dir / "sweep_summary.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    with (tmp_path / "sweep_summary.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "run_dir": f"gone/{Path(r['run_dir']).name}x"} for r in rows)
    trials = load_sweep(tmp_path)
    assert trials[0].params == {"mechanism": "cbp", "lr": "0.1", "seed": "1", "hidden_dim": "16"}
    assert trials[0].run_dir is None and trials[0].losses == []
    html = write_report(tmp_path).read_text()
    assert "Best per mechanism" in html and STABILITY in html


def test_a_search_sweep_plots_sampled_values_on_a_numeric_axis(tmp_path: Path) -> None:
    trials = [Trial({"trial": str(i), "status": "pruned" if i % 3 == 0 else "finished", "val_loss": str(1 / i)},
                    None, {"lr": str(10 ** (-i / 3)), "mechanism": "cbp" if i % 2 else "redo"}, [1 / i] * 3)
              for i in range(1, 11)]
    ctx = context(tmp_path, trials)
    lr = ctx["figures"]["effect0"]
    assert lr["layout"]["xaxis"]["type"] == "log" and len(lr["data"][0]["x"]) == 10
    assert all(isinstance(x, float) for x in lr["data"][0]["x"])
    assert ctx["figures"]["effect1"]["layout"]["xaxis"]["type"] == "category"
    assert {g["param"] for g in ctx["groups"]} == {"mechanism"}  # one trial per lr: no groups to compare
    assert ctx["statuses"] == {"finished": 7, "pruned": 3}

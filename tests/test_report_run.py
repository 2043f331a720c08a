"""Run reports: written at the end of every run (whatever its outcome), ``--no_report``, ``plasticity report``.

The runs are tiny seeds runs executed in this process (a few steps each), so
the report is the one a real run writes; a hand-made run directory covers the
faults a short run does not produce (sink errors, loss explosions, harmful
changes) and files a killed run leaves behind (a torn last line).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

import engine.report
from engine.cli.main import cli, main
from engine.cli.wiring import execute_run
from engine.config import build_config, config_hash
from engine.identity import new_identity
from engine.report import write_report
from engine.report.render import PLOTLY_NAME, plotly_bundle
from engine.resume import resume_config

TINY = {"warm_up_epochs": 2, "adaptation_epochs": 2, "n_samples": 200, "hidden_dim": 8,
        "metrics_port": 0, "console": "off", "tensorboard": False}  # 3 steps per epoch


def _run(tmp: Path, name: str, **flat: object) -> tuple[str, Path]:
    cfg = build_config({**TINY, "output_dir": str(tmp), **flat})
    run_dir = tmp / name
    return execute_run(cfg, run_dir, identity=new_identity(cfg)).status, run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("report_runs")
    return {"rollback": _run(tmp, "rollback", on_diverge="rollback", fault_nan_step=7),
            "diverged": _run(tmp, "diverged", fault_nan_step=7),
            "quiet": _run(tmp, "quiet", report=False)}


def figures_of(html: str) -> dict:
    """The plotly figures embedded in a report (the JSON the page draws)."""
    m = re.search(r'<script type="application/json" id="figures">(.*?)</script>', html, re.S)
    assert m, "no figure data in the report"
    return json.loads(m.group(1))


def assert_offline(html: str) -> None:
    """Nothing the page loads or links to is on the network."""
    remote = re.findall(r'(?:src|href)="((?:https?:)?//[^"]*)"', html)
    assert remote == []


def test_a_run_writes_its_report_with_rollbacks_among_its_faults(runs: dict) -> None:
    status, run_dir = runs["rollback"]
    assert status == "finished"
    html = (run_dir / "report.html").read_text()
    assert (run_dir / PLOTLY_NAME).stat().st_size == plotly_bundle().stat().st_size
    assert '<script src="plotly.min.js"></script>' in html
    assert_offline(html)
    for tab in ("overview", "events", "gallery", "alerts", "files"):
        assert f'id="panel-{tab}"' in html
    assert 'id="panel-texts"' not in html  # the seeds family writes no text samples
    figs = figures_of(html)
    assert {"loss", "accuracy"} <= set(figs)
    assert [t["name"] for t in figs["loss"]["data"]] == ["train_loss", "val_loss"]
    assert figs["loss"]["data"][0]["x"] == [1, 2, 3, 4]  # epochs, rows of the rolled-back epoch replaced
    alerts = html[html.index('id="panel-alerts"'):html.index('id="panel-files"')]
    for fault in ("Rollback", "NonFiniteLoss", "rollbacks", "nonfinite_steps"):
        assert f"<td>{fault}</td>" in alerts
    assert '<a href="history.jsonl">history.jsonl</a>' in html and '<a href="config.yaml">' in html


def test_a_diverged_run_gets_a_report_of_its_partial_results(runs: dict) -> None:
    status, run_dir = runs["diverged"]
    assert status == "diverged"
    html = (run_dir / "report.html").read_text()
    assert '<span class="status diverged">diverged</span>' in html
    assert "<td>status diverged</td>" in html and "<td>NonFiniteLoss</td>" in html
    assert figures_of(html)["loss"]["data"][0]["x"] == [1, 2]  # the epochs completed before the NaN


def test_no_report_then_the_report_command(runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status, run_dir = runs["quiet"]
    assert status == "finished" and not (run_dir / "report.html").exists()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").is_file() and (run_dir / PLOTLY_NAME).is_file()
    assert "report: " in capsys.readouterr().err
    for bad in (tmp_path / "missing", tmp_path):  # nothing there; a directory of neither kind
        assert main(["report", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "'path'" in err and str(bad) in err and "run directory" in err
        assert not (bad / "report.html").exists()


def test_no_report_is_a_runtime_option() -> None:
    assert any("--no_report" in p.secondary_opts for p in cli.params if p.name == "report")
    on, off = build_config({}), build_config({"report": False})
    assert config_hash(on) == config_hash(off)  # not part of the experiment
    assert resume_config(on, {"report": False}).telemetry.report is False  # allowed with --resume


def test_a_failing_report_never_changes_the_outcome(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    def broken(path: Path) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(engine.report, "write_report", broken)
    with caplog.at_level(logging.WARNING, logger="engine.report"):
        status, run_dir = _run(tmp_path, "run", adaptation_epochs=0)
    assert status == "finished" and not (run_dir / "report.html").exists()
    assert "could not write the report" in caplog.text and "disk full" in caplog.text
    assert "could not write the report" in (run_dir / "run.log").read_text()


def _jsonl(path: Path, rows: list[dict], torn: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + torn)


def test_report_of_a_killed_run_with_every_kind_of_fault(tmp_path: Path) -> None:
    run = tmp_path / "killed"
    (run / "artifacts").mkdir(parents=True)
    (run / "config.yaml").write_text("experiment: heads\ntrain: {lr: 0.003}\n")
    (run / "metrics.json").write_text(json.dumps({"status": "running", "metrics": {"val_loss": 2.5}}))
    _jsonl(run / "history.jsonl", [{"epoch": e, "step": 10 * (e + 1), "phase": "train", "train_loss": 3 - e / 10,
                                    "val_loss": 3.1 - e / 10, "val_perplexity": 20.0 - e} for e in range(4)],
           torn='{"epoch": 4, "step": 5')
    change = {"kind": "head_prune", "layer": "blocks.0.attn", "epoch": 1, "step": 20, "subject": "", "units": 1}
    _jsonl(run / "events.jsonl", [
        {"event": "StructuralChange", **change, "reason": "round 1", "quality_before": 3.0},
        {"event": "StructuralImpact", **change, "metric": "val_loss", "before": 3.0, "after": 2.9,
         "delta": 0.5, "relative": 0.1667, "harmful": True, "settled": 2},
        {"event": "SinkFailed", "sink": "mlflow", "error": "ConnectionError: refused"},
        {"event": "LossExplosion", "epoch": 3, "step": 40, "loss": 9.0, "ratio": 6.2, "evaluations": 1}])
    _jsonl(run / "text_samples.jsonl", [{"epoch": 1, "step": 20, "tag": "after/head_prune", "text": "To be <or>"}])
    _jsonl(run / "samples.jsonl", [{"epoch": 1, "step": 20, "metric": "heads_active", "labels": ["blocks.0"],
                                    "value": 3.0}])
    (run / "artifacts" / "importance.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (run / "run.log").write_text("12:00:00 WARNING engine.training.impact: harmful change\n12:00:01 INFO x: ok\n")
    html = write_report(run).read_text()
    assert_offline(html)
    assert '<span class="status running">running</span>' in html
    assert 'id="panel-texts"' in html and "To be &lt;or&gt;" in html  # escaped
    assert '<a class="zoom" href="artifacts/importance.png"' in html
    alerts = html[html.index('id="panel-alerts"'):html.index('id="panel-files"')]
    for what in ("SinkFailed", "LossExplosion", "harmful structural change", "status running", "run.log"):
        assert f"<td>{what}</td>" in alerts
    assert "ConnectionError: refused" in alerts and "harmful change" in alerts and " INFO " not in alerts
    assert '<tr class="harmful">' in html
    figs = figures_of(html)
    assert figs["loss"]["data"][0]["x"] == [1, 2, 3, 4]  # the torn line is left out
    timeline = figs["timeline"]["data"]
    harmful = next(t for t in timeline if t["name"] == "harmful change")
    assert harmful["x"][:2] == [20, 30] and harmful["y"][:2] == [3.0, 2.9]  # after: the evaluation with 2.9
    assert figs["samples"]["data"][0]["name"] == "blocks.0"

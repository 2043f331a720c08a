"""The DVC pipeline (dvc.yaml + params.yaml) with the real dvc CLI on a scratch git repo.

The repo's ``dvc.yaml``, ``.dvcignore``, the sweep YAML it names and a copy of
``engine/`` go into a fresh ``git init`` + ``dvc init`` repo in tmp; its
``params.yaml`` is the repo's with the data source pointed at the committed
corpus slice (nothing is downloaded) and tiny run settings (tests/_char.py).
Then ``dvc repro`` runs data -> train -> report and the sweep; ``dvc metrics
show`` and ``dvc plots show`` read what the stages exported; a second ``dvc
repro`` runs nothing; after one train parameter changes, ``dvc repro`` reruns
train and report only. Without dvc the test is skipped (pip install -r
requirements-dev.txt), except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from _char import SLICE, TINY_HEADS
from _e2e import ROOT, env

STAGES = ("data", "train", "report", "sweep")
MAX_CHARS = 20000
RUN = Path("results/dvc/run")
OUT = Path("results/dvc")


def _dvc() -> list[str]:
    """The dvc command of this Python (``python -m dvc``); skip, or fail under CI=true, without it."""
    if importlib.util.find_spec("dvc") is not None:
        return [sys.executable, "-m", "dvc"]
    if shutil.which("dvc"):
        return [str(shutil.which("dvc"))]
    message = "dvc is not installed; install it with `pip install -r requirements-dev.txt` (dvc>=3.50)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: the DVC pipeline test must not be skipped)")
    pytest.skip(message)


def _flags(flags: list[str]) -> dict[str, Any]:
    """``--key value`` pairs of a tests/_char.py flag list as params.yaml values (its corpus left out)."""
    pairs = dict(zip(flags[::2], flags[1::2]))
    assert all(k.startswith("--") for k in pairs), flags
    out: dict[str, Any] = {k[2:]: yaml.safe_load(v) for k, v in pairs.items() if k != "--text_file"}
    return out


def _params() -> dict[str, Any]:
    """The repo's params.yaml, on the corpus slice with tiny heads runs (every repo key kept)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    tiny = _flags(TINY_HEADS)
    params["data"] = {**params["data"], "source": SLICE, "max_chars": MAX_CHARS}
    params["train"] = {**params["train"], **tiny, "max_iters": 40}
    params["sweep"] = {**params["sweep"], **tiny, "max_iters": 20}
    return params


def _scratch_repo(repo: Path, dvc: list[str], environ: dict[str, str]) -> None:
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=environ)
    subprocess.run(dvc + ["init", "-q"], cwd=repo, check=True, env=environ)
    shutil.copytree(ROOT / "engine", repo / "engine", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for dep in {d for stage in pipeline["stages"].values() for d in stage.get("deps", [])}:
        if dep.startswith("sweeps/"):
            (repo / dep).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / dep, repo / dep)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    (repo / "params.yaml").write_text(yaml.safe_dump(_params(), sort_keys=False))


def _run(dvc: list[str], repo: Path, environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(dvc + list(args), cwd=repo, env=environ, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"dvc {' '.join(args)} exited {r.returncode}:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


def _ran(out: str) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in out}


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_dvc_repro_metrics_plots_and_incremental_rerun(tmp_path: Path) -> None:
    dvc = _dvc()
    environ = env(DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(tmp_path / "dvc-site"),
                  PLASTICITY_DATA_DIR=str(tmp_path / "no-corpus-cache"),
                  PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    environ.pop("PYTHONPATH", None)  # `python -m engine` in the scratch repo imports its copy
    repo = tmp_path / "repo"
    _scratch_repo(repo, dvc, environ)

    # 1. Everything runs, in order, from the slice.
    first = _run(dvc, repo, environ, "repro")
    assert _ran(first.stdout) == set(STAGES), first.stdout[-4000:]
    text = (repo / "data" / "corpus.txt").read_text(encoding="utf-8")
    assert text == Path(SLICE).read_text(encoding="utf-8")[:MAX_CHARS]
    doc = json.loads((repo / RUN / "metrics.json").read_text())
    assert doc["status"] == "finished" and doc["experiment"] == "heads"
    config = yaml.safe_load((repo / RUN / "config.yaml").read_text())
    assert config["family"]["text"]["text_file"] == "data/corpus.txt"
    assert config["family"]["max_iters"] == 40
    assert not (repo / RUN / "report.html").exists()  # the run dir is train's output: the report is a copy's
    assert (repo / OUT / "report" / "report.html").stat().st_size > 0
    history = _csv(repo / OUT / "history.csv")
    assert [int(r["step"]) for r in history] == [10, 20, 30, 40]
    summary = _csv(repo / OUT / "sweep_summary.csv")
    assert sorted(r["head_mode"] for r in summary) == ["none", "prune"]
    assert {r["status"] for r in summary} == {"finished"}

    # 2. dvc metrics show reads the flat metrics of the run and the sweep.
    shown = json.loads(_run(dvc, repo, environ, "metrics", "show", "--json").stdout)
    files = shown[""]["data"]
    run_metrics = files[str(OUT / "metrics.json")]["data"]
    assert run_metrics["finished"] == 1 and run_metrics["steps"] == 40
    assert run_metrics["val_loss"] == pytest.approx(doc["metrics"]["val_loss"])
    sweep_metrics = files[str(OUT / "sweep_metrics.json")]["data"]
    assert sweep_metrics["trials"] == 2 and sweep_metrics["failed"] == 0
    assert sweep_metrics["best_val_loss"] == pytest.approx(min(float(r["val_loss"]) for r in summary))

    # 3. dvc plots show renders the loss curves (x = step) and the sweep's trials.
    plots = json.loads(_run(dvc, repo, environ, "plots", "show", "--json").stdout)
    assert not plots.get("errors"), plots.get("errors")
    loss = plots["data"]["loss"][0]["content"]
    values = loss["data"]["values"]
    for field in ("train_loss", "val_loss"):
        points = [v for v in values if v.get("field") == field]
        assert [int(v["step"]) for v in points] == [10, 20, 30, 40]
        assert [float(v[field]) for v in points] == pytest.approx([float(r[field]) for r in history])
    assert len(plots["data"]["sweep_val_loss"][0]["content"]["data"]["values"]) == 2

    # 4. Nothing changed: nothing runs.
    second = _run(dvc, repo, environ, "repro")
    assert _ran(second.stdout) == set(), second.stdout[-4000:]
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change" in second.stdout
    assert json.loads(_run(dvc, repo, environ, "status", "--json").stdout) == {}

    # 5. One train parameter changes: train and its report rerun; the data and the sweep do not.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["lr"] = 0.002
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run(dvc, repo, environ, "repro")
    assert _ran(third.stdout) == {"train", "report"}, third.stdout[-4000:]
    assert "Stage 'data' didn't change" in third.stdout and "Stage 'sweep' didn't change" in third.stdout
    assert yaml.safe_load((repo / RUN / "config.yaml").read_text())["train"]["lr"] == 0.002
    assert (repo / "data" / "corpus.txt").read_text(encoding="utf-8") == text
    assert json.loads(_run(dvc, repo, environ, "status", "--json").stdout) == {}


@pytest.mark.parametrize("args, names", [
    (["--run_dir", "{dir}/exists", "--metrics_port", "0", "--console", "off"], ["run_dir", "exists", "not exist yet"]),
    (["-s", "sweeps/dvc_heads.yaml", "--run_dir", "{dir}/new"], ["run_dir", "new", "not with --resume or -s"]),
    (["data", "--source", "{dir}/missing.txt", "--out", "{dir}/new/corpus.txt"],
     ["source", "missing.txt", "shakespeare:plays", "no such file"]),
    (["data", "--source", "{dir}/exists", "--out", "{dir}/new/corpus.txt"], ["source", "exists", "a directory"]),
    (["export", "{dir}/missing", "--metrics", "{dir}/new/m.json"], ["source", "missing", "run directory"]),
    (["export", "{dir}/exists", "--plots", "{dir}/new/p.csv"], ["sweep", "exists", "sweep_summary.csv"]),
    (["export", "{dir}/exists"], ["export", "exists", "--metrics FILE"]),
], ids=["run_dir_exists", "run_dir_with_sweep", "data_missing", "data_directory", "export_missing",
        "export_not_a_run_or_sweep", "export_nothing_to_write"])
def test_pipeline_commands_reject_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            args: list[str], names: list[str]) -> None:
    from engine.cli.main import main

    (tmp_path / "exists").mkdir()
    code = main([a.format(dir=tmp_path) for a in args])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert all(n in lines[0] for n in names), lines[0]
    assert not (tmp_path / "new").exists() and list((tmp_path / "exists").iterdir()) == []

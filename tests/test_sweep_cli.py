"""A real sweep through the CLI: trials in processes, results layout, summary CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from _e2e import run, start, stop, try_scrape, wait_for


def test_real_sweep_writes_every_trial_and_the_summary(tmp_path: Path) -> None:
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text("sweep:\n  name: tiny\nlr: [0.003, 0.01]\nhidden_dim: 8\n"
                     "warm_up_epochs: 2\nadaptation_epochs: 1\ntensorboard: false\n")
    out = tmp_path / "out"
    proc = run(["-s", str(sweep), "--parallel", "2", "--output_dir", str(out), "--n_samples", "200"], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (sweep_dir,) = (out / "sweeps").iterdir()
    rows = list(csv.DictReader((sweep_dir / "sweep_summary.csv").open()))
    assert sorted(r["lr"] for r in rows) == ["0.003", "0.01"]
    assert {r["status"] for r in rows} == {"finished"}
    assert all(r["n_samples"] == "200" for r in rows)  # CLI flag used as a default for every trial
    for r in rows:
        run_dir = sweep_dir / r["run_dir"]
        assert run_dir.name == f"run_{int(r['trial']):03d}_{r['config_hash']}"
        for name in ("config.yaml", "identity.json", "run.log", "metrics.json", "history.jsonl", "checkpoint.pt"):
            assert (run_dir / name).is_file(), name
        doc = json.loads((run_dir / "metrics.json").read_text())
        assert doc["status"] == "finished" and doc["run_id"] == r["run_id"]
        assert doc["config_hash"] == r["config_hash"] and r["run_id"].startswith(r["config_hash"] + "-")
        identity = json.loads((run_dir / "identity.json").read_text())
        assert identity == {"run_id": r["run_id"], "config_hash": r["config_hash"]}
        assert float(r["epochs"]) == 3.0
    assert list((out / "file_sd").glob("*.json")) == []  # targets removed when the sweep ended


def _registered(sd_dir: Path) -> list[dict] | None:
    """The targets of the (single) sweep file_sd file, once one is registered."""
    for path in sd_dir.glob("*.json") if sd_dir.is_dir() else []:
        try:
            groups = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if groups:
            return groups
    return None


def test_file_sd_run_label_is_the_run_id_the_trial_reports(tmp_path: Path) -> None:
    sweep = tmp_path / "live.yaml"
    sweep.write_text("sweep:\n  name: live\nseed: 3\nwarm_up_epochs: 60\nadaptation_epochs: 0\n"
                     "tensorboard: false\nmetrics_linger: 5\n")
    out = tmp_path / "out"
    proc = None
    try:
        proc = start(["-s", str(sweep), "--output_dir", str(out)], tmp_path / "logs")
        (group,) = wait_for("a registered trial", lambda: _registered(out / "file_sd"), timeout=60,
                            interval=0.02, proc=proc)
        host_port = group["targets"][0]
        assert host_port.startswith("127.0.0.1:")
        live = wait_for("the trial's run_info", lambda: (s := try_scrape(int(host_port.rsplit(":", 1)[1])))
                        and s.labelled("plasticity_run_info"), timeout=60, proc=proc)
        assert proc.wait(timeout=120) == 0, proc.err()[-3000:]
    finally:
        stop(proc)
    (sweep_dir,) = (out / "sweeps").iterdir()
    (run_dir,) = sweep_dir.glob("run_001_*")
    identity = json.loads((run_dir / "identity.json").read_text())
    labels = group["labels"]
    assert labels == {"sweep": "live", "run": identity["run_id"], "trial": "001", "node": "local"}
    (info,) = live
    assert info[0]["run_id"] == identity["run_id"] and info[0]["config_hash"] == identity["config_hash"]
    assert json.loads((run_dir / "metrics.json").read_text())["run_id"] == identity["run_id"]
    (row,) = csv.DictReader((sweep_dir / "sweep_summary.csv").open())
    assert (row["run_id"], row["config_hash"]) == (identity["run_id"], identity["config_hash"])
    assert run_dir.name == f"run_001_{identity['config_hash']}"


def test_two_sweeps_of_one_name_in_one_second_get_their_own_dirs(tmp_path: Path) -> None:
    from engine.cli.sweep import _new_sweep_dir

    dirs = [_new_sweep_dir(tmp_path / "sweeps", "tiny") for _ in range(3)]
    assert len(set(dirs)) == 3 and all(d.is_dir() for d in dirs)
    assert {d.name.split("_", 1)[1] for d in dirs} >= {"tiny"}

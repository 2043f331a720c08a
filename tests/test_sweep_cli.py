"""A real sweep through the CLI: trials in processes, results layout, summary CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from _e2e import run


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
        assert run_dir.name == f"run_{int(r['trial']):03d}_{r['run_id']}"
        for name in ("config.yaml", "run.log", "metrics.json", "history.jsonl", "checkpoint.pt"):
            assert (run_dir / name).is_file(), name
        doc = json.loads((run_dir / "metrics.json").read_text())
        assert doc["status"] == "finished" and doc["run_id"] == r["run_id"]
        assert float(r["epochs"]) == 3.0
    assert list((out / "file_sd").glob("*.json")) == []  # targets removed when the sweep ended

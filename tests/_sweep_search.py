"""Shared helpers of the sweep search/resume tests: tiny real trials, study and summary readers."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

#: Fixed keys of every tiny trial: seeds on 200 spiral samples, 3 steps an epoch,
#: no sink that costs time or lingers (a pruned trial ends at once).
TINY = {"hidden_dim": 8, "n_samples": 200, "adaptation_epochs": 0, "tensorboard": False,
        "metrics_linger": 0, "console": "off"}
#: CLI flags of every test sweep: no HTML reports (trials inherit the flag).
FLAGS = ["--no_report"]


def yaml_text(name: str, fixed: dict[str, Any], search: str = "") -> str:
    """A sweep YAML: ``sweep.name``, the ``search:`` block text (indented) and fixed keys."""
    lines = ["sweep:", f"  name: {name}"]
    if search:
        lines += ["search:", *("  " + ln for ln in search.strip().splitlines())]
    for key, value in fixed.items():
        text = str(value).lower() if isinstance(value, bool) else f'"{value}"' if isinstance(value, str) else value
        lines.append(f"{key}: {text}")
    return "\n".join(lines) + "\n"


#: Seed 10 of Optuna's random/TPE start-up sampler asks lr 0.05, 1e-5, 0.05: the
#: second trial learns nothing, so its val loss sits above the first's at every
#: epoch and the median pruner (one finished trial, epoch >= 3) stops it.
PRUNING_SEARCH = """
method: bayes
n_trials: 3
parameters:
  lr: {type: categorical, choices: [0.05, 0.00001]}
objective: {metric: val_loss, direction: minimize}
sampler: {name: tpe, seed: 10, n_startup_trials: 3}
pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 3}
"""


def summary_rows(sweep_dir: Path) -> list[dict[str, str]]:
    """The sweep's summary rows (none yet if the file is missing)."""
    path = sweep_dir / "sweep_summary.csv"
    return list(csv.DictReader(path.open())) if path.is_file() else []


def study_trials(sweep_dir: Path) -> list[Any]:
    """The frozen trials of the sweep's Optuna study, by number."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{sweep_dir / 'study.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def assert_study_matches_summary(sweep_dir: Path, n_trials: int) -> list[dict[str, str]]:
    """One summary row per trial 1..n, each agreeing with its study trial's state and value."""
    rows = sorted(summary_rows(sweep_dir), key=lambda r: int(r["trial"]))
    assert [int(r["trial"]) for r in rows] == list(range(1, n_trials + 1)), rows
    trials = study_trials(sweep_dir)
    assert [t.number + 1 for t in trials] == list(range(1, n_trials + 1))
    state_of = {"finished": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL", "diverged": "FAIL"}
    for row, t in zip(rows, trials):
        assert t.state.name == state_of[row["status"]], (row, t)
        assert t.user_attrs["status"] == row["status"] and t.user_attrs["run_id"] == row["run_id"]
        assert t.user_attrs["run_dir"] == row["run_dir"]
        assert float(row["lr"]) == t.params["lr"]
        if row["status"] == "finished":
            assert float(row["objective"]) == t.value
    return rows


def trial_processes(sweep_dir: Path) -> list[int]:
    """PIDs of live (non-zombie) processes whose command line names ``sweep_dir`` (its trials)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # ended meanwhile
        if str(sweep_dir) in cmdline and state != "Z":
            out.append(int(proc.name))
    return out

"""An Optuna study as a sweep's trial source: ask as slots free up, tell as trials end.

The study lives in SQLite at ``<sweep_dir>/study.db`` (study name = the sweep
name), so a killed coordinator loses nothing the database had: a resume
loads it, keeps every COMPLETE, PRUNED and FAIL trial, runs each trial left
RUNNING again in its own directory (continuing from its checkpoint, through
``python -m engine trial``) and asks new ones until ``n_trials`` exist.

Outcomes: ``finished`` -> COMPLETE with the objective's final value from
``metrics.json``; ``pruned`` -> PRUNED; ``failed`` -> FAIL; ``diverged`` ->
FAIL too (a non-finite loss has no value to compare; TPE then samples as if
the point was never tried rather than being told a made-up "worst" value
that would skew its density of good trials); ``interrupted`` (the sweep was
stopped) stays RUNNING, so a resume continues it. Each trial's status and
run_id are also kept as user attributes.
"""

from __future__ import annotations

import json
import logging
import math
import signal
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)
from optuna.trial import TrialState

from engine.config import build_config, config_hash, parameters
from engine.errors import ConfigError
from engine.sweep.executor import TrialHandle
from engine.sweep.grid import Trial
from engine.sweep.pruning import PruneWatch
from engine.sweep.search import SearchSpec

log = logging.getLogger("engine.sweep")

STUDY_FILE = "study.db"
_DONE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
#: Summary statuses of a trial whose outcome is settled (``interrupted`` is not).
SETTLED = frozenset({"finished", "diverged", "pruned", "failed"})


def _distributions(spec: SearchSpec) -> dict[str, BaseDistribution]:
    if spec.method == "grid":  # the grid sampler's points, exactly as it enumerates them
        return {k: CategoricalDistribution(v) for k, v in spec.grid_space().items()}
    out: dict[str, BaseDistribution] = {}
    for name, p in spec.parameters.items():
        if p.type == "categorical":
            out[name] = CategoricalDistribution(p.choices or [])
        elif p.type == "int":
            out[name] = IntDistribution(int(p.low or 0), int(p.high or 0), log=p.log, step=int(p.step or 1))
        else:
            out[name] = FloatDistribution(float(p.low or 0), float(p.high or 0), log=p.log, step=p.step)
    return out


def _sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    seed = spec.sampler.seed
    if spec.sampler_name == "grid":
        return optuna.samplers.GridSampler(spec.grid_space(), seed=seed)
    if spec.sampler_name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = spec.sampler.n_startup_trials
    # constant_liar: trials still running count as (pessimistic) results, so
    # parallel asks spread out instead of all landing on one point.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True,
                                      **({} if startup is None else {"n_startup_trials": startup}))


def _pruner(spec: SearchSpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    if p.name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps,
                                       interval_steps=p.interval_steps)


def open_study(spec: SearchSpec, sweep_dir: Path, name: str) -> optuna.Study:
    """Create or load the sweep's study in ``sweep_dir/study.db``."""
    # Optuna's own per-trial INFO lines would duplicate the sweep's; its
    # warnings go through the application's logging configuration.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=f"sqlite:///{Path(sweep_dir).resolve() / STUDY_FILE}", study_name=name,
                               sampler=_sampler(spec), pruner=_pruner(spec),
                               direction=spec.objective.direction, load_if_exists=True)


class StudySource:
    """Trials asked from an Optuna study (see the module docstring for resume and outcomes).

    ``fixed`` holds the flat config every trial shares (CLI defaults and the
    YAML's fixed keys); ``rows`` the summary rows already written (on a
    resume), by trial index.
    """

    def __init__(self, spec: SearchSpec, fixed: dict[str, Any], study: optuna.Study,
                 rows: dict[int, dict[str, Any]] | None = None) -> None:
        self.spec, self.fixed, self.study = spec, dict(fixed), study
        self.total = spec.total_trials()
        self._dists = _distributions(spec)
        self._live: dict[int, optuna.trial.Trial] = {}  # trial index -> its Optuna trial
        self._watch: dict[int, PruneWatch] = {}
        self._steps: dict[int, set[int]] = {}  # epochs a continued trial reported before the resume
        self._stopped = False
        # Summary columns: the searched keys, the objective, then every other result-relevant key.
        first = {k: d.choices[0] if isinstance(d, CategoricalDistribution) else d.low  # type: ignore[attr-defined]
                 for k, d in self._dists.items()}
        base = parameters(build_config({**self.fixed, **first}))
        self.param_keys = [*spec.parameters, "objective", *(k for k in base if k not in spec.parameters)]
        self._relaunch: list[optuna.trial.FrozenTrial] = []
        trials = study.get_trials(deepcopy=False)
        self._count = len(trials)
        for ft in trials:
            row = (rows or {}).get(ft.number + 1)
            if ft.state == TrialState.RUNNING and row is not None and row.get("status") in SETTLED:
                # Killed after writing the row, before telling the study: the row is the record.
                self._live[ft.number + 1] = optuna.trial.Trial(study, ft._trial_id)  # noqa: SLF001
                self.commit(self._trial(ft.number, dict(ft.params)), _parsed(row))
            elif ft.state == TrialState.RUNNING:
                self._relaunch.append(ft)
        done = sum(ft.state in _DONE for ft in study.get_trials(deepcopy=False))
        if trials:
            log.info("resume: study has %d trial(s): %d done, %d to continue, %d to ask", len(trials), done,
                     len(self._relaunch), max(0, self.total - self._count))

    def _trial(self, number: int, params: dict[str, Any]) -> Trial:
        flat = {**self.fixed, **params}
        cfg = build_config(flat)
        return Trial(number + 1, config_hash(cfg), flat, cfg, dict(params))

    def next_trial(self) -> Trial | None:
        while not self._stopped:
            if self._relaunch:
                ft = self._relaunch.pop(0)
                ot = optuna.trial.Trial(self.study, ft._trial_id)  # noqa: SLF001 - reopen a RUNNING trial
                params = dict(ft.params)
                self._steps[ot.number + 1] = set(ft.intermediate_values)
            elif self._count < self.total:
                ot = self.study.ask(self._dists)
                self._count += 1
                params = dict(ot.params)
            else:
                return None
            try:
                trial = self._trial(ot.number, params)
            except ConfigError as exc:  # a combination the corners did not cover
                log.warning("trial %03d: sampled config is invalid (%s): failed", ot.number + 1, exc)
                ot.set_user_attr("status", "failed")
                self.study.tell(ot, state=TrialState.FAIL, skip_if_finished=True)
                continue
            ot.set_user_attr("run_dir", f"run_{trial.index:03d}_{trial.config_hash}")
            self._live[trial.index] = ot
            log.info("trial %03d: %s", trial.index, ", ".join(f"{k}={v!r}" for k, v in params.items()))
            return trial
        return None

    def exhausted(self) -> bool:
        return self._stopped or (not self._relaunch and self._count >= self.total)

    def stop(self) -> None:
        self._stopped = True

    def watch(self, trial: Trial, run_dir: Path, handle: TrialHandle) -> None:
        w = self._watch.get(trial.index)
        if w is None:
            w = self._watch[trial.index] = PruneWatch(self._live[trial.index], run_dir / "history.jsonl",
                                                      self.spec.objective.metric, self._steps.pop(trial.index, ()))
        if w.poll():
            assert w.pruned_at is not None
            log.info("trial %03d pruned at epoch %d (%s %.5g): stopping it", trial.index, w.pruned_at[0],
                     self.spec.objective.metric, w.pruned_at[1])
            handle.send_signal(signal.SIGTERM)  # the trial ends "interrupted", its checkpoint kept

    def result(self, trial: Trial, run_dir: Path, row: dict[str, Any]) -> dict[str, Any]:
        w = self._watch.pop(trial.index, None)
        if w is not None:
            w.poll(decide=False)  # the epochs written after the last poll
        status, metric = row.get("status"), self.spec.objective.metric
        if w is not None and w.pruned_at is not None and status == "interrupted":
            row["status"] = "pruned"
            row["error"] = f"pruned at epoch {w.pruned_at[0]}: {metric} {w.pruned_at[1]:.5g}"
        elif status == "finished":
            value = _final(run_dir, metric)
            if value is None:
                row["status"], row["error"] = "failed", f"objective {metric} missing or not finite in metrics.json"
            else:
                row["objective"] = value
        return row

    def commit(self, trial: Trial, row: dict[str, Any]) -> None:
        ot = self._live.pop(trial.index, None)
        status = str(row.get("status"))
        if ot is None or status not in SETTLED:
            return  # interrupted: stays RUNNING for a resume
        ot.set_user_attr("status", status)
        ot.set_user_attr("run_id", str(row.get("run_id", "")))
        if status == "finished":
            self.study.tell(ot, float(row["objective"]), skip_if_finished=True)
        else:
            state = TrialState.PRUNED if status == "pruned" else TrialState.FAIL
            self.study.tell(ot, state=state, skip_if_finished=True)

    def best(self) -> tuple[int, float, dict[str, Any]] | None:
        """``(trial index, objective, params)`` of the best COMPLETE trial, if any."""
        done = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        if not done:
            return None
        bt = self.study.best_trial
        return bt.number + 1, float(bt.value or 0.0), dict(bt.params)


def _final(run_dir: Path, metric: str) -> float | None:
    try:
        value = json.loads((run_dir / "metrics.json").read_text())["metrics"][metric]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _parsed(row: dict[str, Any]) -> dict[str, Any]:
    """A summary CSV row (strings) with its objective as a number again."""
    try:
        return {**row, "objective": float(row["objective"])}
    except (KeyError, TypeError, ValueError):
        return {**row, "status": "failed"} if row.get("status") == "finished" else row

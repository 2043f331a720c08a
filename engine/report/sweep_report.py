"""The report of a sweep: ``report.html`` in the sweep directory, from its summary and trial files.

Trials are ranked on their final loss and accuracy (``sweep_summary.csv``) and
on their stability (variance of the loss over the last epochs of each trial's
``history.jsonl``); grouped by each parameter the sweep varies, with the
statistics of :mod:`engine.report.analysis`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from engine.report import analysis as an
from engine.report.figures import figure
from engine.report.load import Trial, load_sweep
from engine.report.render import REPORT_NAME, fmt, write_page

log = logging.getLogger("engine.report")

#: Final figures shown per trial, and whether lower is better.
METRICS = {"val_loss": True, "val_accuracy": False, "best_val_accuracy": False, "train_loss": True}
STABILITY = "loss_variance"
#: Numeric parameters with more distinct values than this are plotted on a numeric axis.
CATEGORY_LIMIT = 8


def _value(t: Trial, metric: str) -> float | None:
    if metric == STABILITY:
        return an.tail_variance(t.losses)
    return an.finite(t.row.get(metric))


def _metrics(trials: list[Trial]) -> list[str]:
    """Final figures that some trial has, then the stability figure."""
    return [m for m in METRICS if any(_value(t, m) is not None for t in trials)] + [STABILITY]


def _objective(metrics: list[str]) -> str:
    return next((m for m in ("val_loss", "train_loss") if m in metrics), STABILITY)


def _lower(metric: str) -> bool:
    return METRICS.get(metric, True)


def _link(sweep_dir: Path, t: Trial) -> str:
    if t.run_dir is None:
        return ""
    rel = t.run_dir.name if t.run_dir.parent.resolve() == sweep_dir.resolve() else str(t.run_dir)
    return f"{rel}/{REPORT_NAME}" if (t.run_dir / REPORT_NAME).is_file() else f"{rel}/"


def _row(sweep_dir: Path, t: Trial, params: list[str], metrics: list[str]) -> dict[str, Any]:
    return {"trial": t.row.get("trial", ""), "status": t.row.get("status", ""), "error": t.row.get("error", ""),
            "run_id": t.row.get("run_id", ""), "link": _link(sweep_dir, t),
            "params": [str(t.params.get(p, "")) for p in params],
            "cells": [_value(t, m) for m in metrics]}


def _groups(trials: list[Trial], param: str, metric: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for t in trials:
        v = _value(t, metric)
        if v is not None:
            out.setdefault(str(t.params.get(param, "")), []).append(v)
    return out


Grouped = dict[tuple[str, str], tuple[dict[str, list[float]], list[an.Group]]]


def _grouped(trials: list[Trial], params: list[str], metrics: list[str]) -> Grouped:
    """Per (parameter, metric): the trials' figures by parameter value and their group statistics."""
    out: Grouped = {}
    for p in params:
        for m in metrics:
            groups = _groups(trials, p, m)
            out[(p, m)] = (groups, an.group_stats(groups))
    return out


def _group_tables(grouped: Grouped) -> list[dict[str, Any]]:
    """Per parameter and metric: group statistics and Welch's test of the two best groups."""
    return [{"param": p, "metric": m, "lower": _lower(m), "stats": stats, "welch": an.compare(groups, stats, _lower(m))}
            for (p, m), (groups, stats) in grouped.items() if len(stats) >= 2 and any(g.n > 1 for g in stats)]


def _axis(values: list[str]) -> dict[str, Any]:
    """Category axis for few or categorical values; a numeric one (log over wide ranges) otherwise,
    e.g. for the learning rates a search samples."""
    if an.is_categorical(values) or len(values) <= CATEGORY_LIMIT:
        return {"type": "category"}
    nums = [float(v) for v in values if an.finite(v) is not None]
    wide = bool(nums) and min(nums) > 0 and max(nums) >= 100 * min(nums)
    return {"type": "log" if wide else "linear"}


def _effect_figures(grouped: Grouped, params: list[str], metrics: list[str]) -> dict[str, Any]:
    """Per parameter: every trial's figure against the parameter's value, with group means and CIs."""
    figs = {}
    for i, p in enumerate(params):
        by_metric = {}
        for m in metrics:
            groups, stats = grouped[(p, m)]
            if not groups:
                continue
            order = sorted(groups, key=an.sort_key)
            axis = _axis(order)
            xs = [x if axis["type"] == "category" else an.finite(x) for x in order for _ in groups[x]]
            points = {"type": "scatter", "mode": "markers", "name": "trials", "marker": {"size": 8, "opacity": 0.6},
                      "x": xs, "y": [v for x in order for v in groups[x]]}
            if axis["type"] != "category":  # one trial per value: the points are the effect
                by_metric[m] = [points]
                continue
            means = {"type": "scatter", "mode": "lines+markers", "name": "mean, 95% bootstrap CI",
                     "x": [g.value for g in stats], "y": [g.mean for g in stats],
                     "error_y": {"type": "data", "symmetric": False,
                                 "array": [(g.ci[1] - g.mean) if g.ci else 0 for g in stats],
                                 "arrayminus": [(g.mean - g.ci[0]) if g.ci else 0 for g in stats]}}
            by_metric[m] = [points, means]
        if by_metric:
            fig = figure(f"Effect of {p}", by_metric, p)
            fig["layout"]["xaxis"].update(axis)
            figs[f"effect{i}"] = fig
    return figs


def context(sweep_dir: Path, trials: list[Trial]) -> dict[str, Any]:
    """Everything the sweep template needs."""
    metrics = _metrics(trials)
    objective = _objective(metrics)
    params = an.varied([t.params for t in trials])
    fixed = {k: v for k, v in (trials[0].params.items() if trials else ()) if k not in params}
    compared = [p for p in params if p != "seed"]
    categorical = [p for p in compared if an.is_categorical(t.params.get(p, "") for t in trials)]
    rows = [_row(sweep_dir, t, params, metrics) for t in trials]
    by_trial = {id(t): r for t, r in zip(trials, rows)}

    def ranked(metric: str) -> list[dict[str, Any]]:
        best = an.top(trials, lambda t: _value(t, metric), 10, descending=not _lower(metric))
        return [by_trial[id(t)] for t in best]

    rankings = [(f"Top 10 by final {m}" + (" (stability: variance of the loss over the last "
                                             f"{an.STABILITY_WINDOW} epochs)" if m == STABILITY else ""),
                 ranked(m)) for m in ("val_loss", "val_accuracy", "train_loss", STABILITY) if m in metrics]
    best = []
    for p in categorical or compared:
        winners = an.best_per_value(trials, lambda t, p=p: str(t.params.get(p, "")),
                                    lambda t: _value(t, objective), _lower(objective))
        best.append({"param": p, "rows": [(v, by_trial[id(t)]) for v, t in winners.items()]})
    grouped = _grouped(trials, compared or params, metrics)
    figs = _effect_figures(grouped, compared or params, metrics)
    statuses: dict[str, int] = {}
    for t in trials:
        statuses[t.row.get("status") or "unknown"] = statuses.get(t.row.get("status") or "unknown", 0) + 1
    return {
        "title": f"sweep {sweep_dir.name}", "sweep_dir": str(sweep_dir), "params": params, "fixed": fixed,
        "metrics": metrics, "objective": objective, "rows": rows, "rankings": rankings, "best": best,
        "categorical": bool(categorical), "figures": figs,
        "groups": _group_tables({k: v for k, v in grouped.items() if k[0] in compared}),
        "statuses": statuses, "fmt": fmt,
        "tabs": [("trials", f"Trials ({len(trials)})", 0), ("rankings", "Rankings", 0),
                 ("best", "Best per value", 0), ("effects", "Parameter effects", 0), ("groups", "Groups", 0)],
    }


def write_sweep_report(sweep_dir: Path) -> Path:
    """Write ``sweep_dir/report.html`` (and ``plotly.min.js`` beside it); return its path."""
    trials = load_sweep(sweep_dir)
    return write_page(sweep_dir, "sweep.html", context(sweep_dir, trials))

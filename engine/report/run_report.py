"""The report of one run: ``report.html`` in its run directory, from its result files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from engine.report import figures
from engine.report.load import RunData, load_run, number
from engine.report.render import fmt, human_size, write_page

log = logging.getLogger("engine.report")

#: events.jsonl entries shown as alerts / faults, with their severity.
_FAULTS = {"NonFiniteLoss": "error", "Rollback": "warning", "LossExplosion": "error", "SinkFailed": "warning"}
#: metrics.json counters that, when non-zero, are faults seen during the run.
_FAULT_COUNTERS = ("nonfinite_steps", "rollbacks", "loss_exploding_evaluations")
#: Structural-change columns of the events table.
_CHANGE_KEYS = ("kind", "layer", "subject", "units", "reason")


def _describe(e: dict[str, Any]) -> str:
    """One line for a structural impact: what changed, quality before -> after."""
    who = f" {e['subject']}" if e.get("subject") else ""
    before, after, rel = number(e.get("before")), number(e.get("after")), number(e.get("relative"))
    figure = f"{e.get('metric', 'quality')} {fmt(before)} -> {fmt(after)}"
    rel_text = f" ({rel:+.1%})" if rel is not None else ""
    return f"epoch {int(e.get('epoch', 0)) + 1}: {e.get('kind')}{who} on {e.get('layer')}: {figure}{rel_text}"


def structural_changes(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each StructuralChange joined with its StructuralImpact (same kind, layer, subject, step), in order.

    Impacts with no change row (e.g. rows rewound by a rollback) are kept on their own.
    """
    rows: list[dict[str, Any]] = []
    index: dict[tuple[Any, ...], dict[str, Any]] = {}
    for e in events:
        key = (e.get("kind"), e.get("layer"), e.get("subject"), e.get("step"))
        if e.get("event") == "StructuralChange":
            row = {k: e.get(k) for k in _CHANGE_KEYS} | {"epoch": e.get("epoch"), "step": e.get("step"),
                                                         "before": number(e.get("quality_before"))}
            rows.append(row)
            index[key] = row
        elif e.get("event") == "StructuralImpact":
            row = index.get(key)
            if row is None:
                row = {k: e.get(k) for k in _CHANGE_KEYS} | {"epoch": e.get("epoch"), "step": e.get("step")}
                rows.append(row)
            row.update(metric=e.get("metric"), before=number(e.get("before")), after=number(e.get("after")),
                       relative=number(e.get("relative")), harmful=bool(e.get("harmful")), settled=e.get("settled"),
                       accuracy_before=number(e.get("accuracy_before")),
                       accuracy_after=number(e.get("accuracy_after")), text=_describe(e))
    return rows


def lifecycle(events: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Seed transitions and milestones, one line each."""
    out = []
    for e in events:
        if e.get("event") == "SeedTransition":
            what = f"seed {e.get('seed_id')} ({e.get('layer')}): {e.get('from_state')} -> {e.get('to_state')}"
            out.append({"epoch": str(e.get("epoch")), "what": what, "detail": str(e.get("reason") or "")})
        elif e.get("event") == "Milestone":
            out.append({"epoch": str(e.get("epoch")), "what": f"milestone {e.get('name')}",
                        "detail": str(e.get("detail") or "")})
    return out


def decisions(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """decisions.jsonl rows with their scalar payload fields pulled out and the full payload as JSON."""
    out = []
    for r in rows:
        payload = r.get("payload") if isinstance(r.get("payload"), dict) else {}
        scalars = {k: fmt(v) for k, v in payload.items() if isinstance(v, (str, int, float, bool))}
        out.append({"epoch": r.get("epoch"), "step": r.get("step"), "kind": r.get("kind"), "scalars": scalars,
                    "json": json.dumps(payload, indent=1, sort_keys=True)[:20000]})
    return out


def alerts(data: RunData) -> list[dict[str, str]]:
    """Faults seen: a non-finished status, fault events, harmful changes, counters and log warnings."""
    out: list[dict[str, str]] = []
    if data.status != "finished":
        err = str(data.metrics.get("error") or "")
        out.append({"severity": "error" if data.status in ("failed", "diverged") else "warning",
                    "kind": f"status {data.status}", "where": "", "detail": err})
    for e in data.events:
        name = str(e.get("event"))
        if name in _FAULTS:
            detail = ", ".join(f"{k} {fmt(v)}" for k, v in e.items() if k not in ("event", "epoch", "step"))
            out.append({"severity": _FAULTS[name], "kind": name, "where": _where(e), "detail": detail})
        elif name == "StructuralImpact" and e.get("harmful"):
            out.append({"severity": "warning", "kind": "harmful structural change", "where": _where(e),
                        "detail": _describe(e)})
    counters = data.metrics.get("metrics") if isinstance(data.metrics.get("metrics"), dict) else {}
    for key in _FAULT_COUNTERS:
        if (v := number(counters.get(key))) and v > 0:
            out.append({"severity": "warning", "kind": key, "where": "metrics.json", "detail": fmt(v)})
    for line in data.log_problems[-200:]:
        out.append({"severity": "error" if " ERROR " in line or " CRITICAL " in line else "warning",
                    "kind": "run.log", "where": "", "detail": line})
    return out


def _where(e: dict[str, Any]) -> str:
    parts = [f"epoch {e['epoch']}" if "epoch" in e else "", f"step {e['step']}" if "step" in e else ""]
    return ", ".join(p for p in parts if p)


def _config_sections(config: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Config as ``section -> [(key, value)]`` (top-level scalars under ``run``)."""
    out: dict[str, list[tuple[str, str]]] = {"run": []}
    for key, value in config.items():
        if isinstance(value, dict):
            out[key] = [(k, json.dumps(v) if isinstance(v, (list, dict)) else fmt(v)) for k, v in value.items()]
        else:
            out["run"].append((key, fmt(value)))
    return out


def context(data: RunData) -> dict[str, Any]:
    """Everything the run template needs."""
    found = alerts(data)
    changes = structural_changes(data.events)
    figs: dict[str, Any] = figures.history_figures(data.history)
    samples = figures.samples_figure(data.samples)
    if samples is not None:
        figs["samples"] = samples
    timeline = figures.timeline_figure(data.history, changes)
    if timeline is not None:
        figs["timeline"] = timeline
    final = data.metrics.get("metrics") if isinstance(data.metrics.get("metrics"), dict) else {}
    return {
        "title": f"run {data.identity.get('run_id') or data.metrics.get('run_id') or data.run_dir.name}",
        "run_dir": str(data.run_dir), "status": data.status, "error": str(data.metrics.get("error") or ""),
        "summary": {k: str(data.metrics.get(k) or data.identity.get(k) or "")
                    for k in ("run_id", "config_hash", "experiment", "device")},
        "final": [(k, fmt(v)) for k, v in sorted(final.items())],
        "config": _config_sections(data.config),
        "manifest": json.dumps(data.manifest, indent=2, sort_keys=True) if data.manifest else "",
        "figures": figs, "overview_figures": [k for k in ("loss", "accuracy", "history", "samples") if k in figs],
        "changes": changes, "lifecycle": lifecycle(data.events), "decisions": decisions(data.decisions),
        "images": data.images, "texts": data.texts, "alerts": found,
        "files": [(f.path, f.size, human_size(f.size)) for f in data.files], "fmt": fmt,
        "tabs": _tabs(data, changes, len(found)),
    }


def _tabs(data: RunData, changes: list[dict[str, Any]], n_alerts: int) -> list[tuple[str, str, int]]:
    """(id, label, badge count) of each tab; text samples only where the family writes them."""
    tabs = [("overview", "Overview", 0), ("events", f"Structural events ({len(changes)})", 0),
            ("gallery", f"Decision gallery ({len(data.images)})", 0)]
    if data.texts:
        tabs.append(("texts", f"Text samples ({len(data.texts)})", 0))
    return tabs + [("alerts", "Alerts / faults", n_alerts), ("files", "Raw files", 0)]


def write_run_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` (and ``plotly.min.js`` beside it); return its path."""
    return write_page(run_dir, "run.html", context(load_run(run_dir)))

"""Plotly figure specs as plain JSON-able dicts (``{"data": [...], "layout": {...}}``).

The page hands them to plotly.js as they are, so a report never imports
plotly's Python graph objects. Long series are thinned to at most
:data:`MAX_POINTS` points and a chart has at most :data:`MAX_TRACES` traces,
which keeps a report of a long run small and quick to open.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

from engine.report.load import number

MAX_POINTS = 1500
MAX_TRACES = 24
#: History keys that are bookkeeping, not figures.
_NOT_FIGURES = frozenset({"epoch", "step", "phase", "seeds"})
#: Per-epoch figures about speed, listed after the family's own in the dropdown.
_THROUGHPUT = frozenset({"duration_seconds", "samples_per_second", "tokens_per_second"})

Trace = dict[str, Any]
Figure = dict[str, Any]


def thin(xs: Sequence[Any], ys: Sequence[Any], limit: int = MAX_POINTS) -> tuple[list[Any], list[Any]]:
    """Every k-th point (and the last) so that at most about ``limit`` remain."""
    if len(xs) <= limit:
        return list(xs), list(ys)
    k = -(-len(xs) // limit)
    idx = list(range(0, len(xs), k))
    if idx[-1] != len(xs) - 1:
        idx.append(len(xs) - 1)
    return [xs[i] for i in idx], [ys[i] for i in idx]


def line(name: str, xs: Sequence[Any], ys: Sequence[Any], **extra: Any) -> Trace:
    """A scatter trace with lines and markers."""
    x, y = thin(xs, ys)
    return {"type": "scatter", "mode": "lines+markers", "name": name, "x": x, "y": y,
            "marker": {"size": 4}, **extra}


def figure(title: str, groups: dict[str, list[Trace]], x_title: str, y_title: str = "") -> Figure:
    """A figure of trace groups; with several groups a dropdown shows one group at a time."""
    names = list(groups)
    data: list[Trace] = []
    owner: list[int] = []
    for g, name in enumerate(names):
        for trace in groups[name][:MAX_TRACES]:
            data.append({**trace, "visible": g == 0})
            owner.append(g)
    layout: dict[str, Any] = {
        "title": {"text": title, "x": 0.02, "xanchor": "left"}, "height": 360,
        "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
        "xaxis": {"title": {"text": x_title}}, "yaxis": {"title": {"text": y_title or (names[0] if names else "")}},
        "legend": {"orientation": "h", "y": -0.2},
    }
    if len(names) > 1:
        buttons = [{"label": name, "method": "update",
                    "args": [{"visible": [o == g for o in owner]}, {"yaxis": {"title": {"text": name}}}]}
                   for g, name in enumerate(names)]
        layout["updatemenus"] = [{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.18, "yanchor": "top"}]
    return {"data": data, "layout": layout}


def history_figures(history: list[dict[str, Any]]) -> dict[str, Figure]:
    """Loss, accuracy and the family's other per-epoch figures from ``history.jsonl``."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for row in history:
        epoch = row.get("epoch")
        for key, value in row.items():
            if key in _NOT_FIGURES:
                continue
            v = number(value)
            if v is not None and isinstance(epoch, int):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(epoch + 1)
                ys.append(v)
    out: dict[str, Figure] = {}
    loss = [k for k in series if k.endswith("loss")]
    acc = [k for k in series if "accuracy" in k]
    rest = [k for k in series if k not in loss and k not in acc]
    if loss:
        out["loss"] = figure("Loss", {"loss": [line(k, *series[k]) for k in loss]}, "epoch", "loss")
    if acc:
        out["accuracy"] = figure("Accuracy", {"accuracy": [line(k, *series[k]) for k in acc]}, "epoch", "accuracy")
    if rest:
        rest.sort(key=lambda k: (k.startswith("device_") or k in _THROUGHPUT, k))
        out["history"] = figure("Per-epoch figures", {k: [line(k, *series[k])] for k in rest}, "epoch")
    return out


def samples_figure(samples: list[dict[str, Any]]) -> Figure | None:
    """The family's measurements (``samples.jsonl``): one dropdown entry per metric, a trace per label set."""
    by_metric: dict[str, dict[str, tuple[list[int], list[float]]]] = defaultdict(dict)
    for row in samples:
        v, step = number(row.get("value")), row.get("step")
        if v is None or not isinstance(step, int):
            continue
        labels = "/".join(str(x) for x in row.get("labels") or ()) or str(row.get("metric"))
        xs, ys = by_metric[str(row.get("metric"))].setdefault(labels, ([], []))
        xs.append(step)
        ys.append(v)
    if not by_metric:
        return None
    groups = {m: [line(lab, *xy) for lab, xy in sorted(traces.items())] for m, traces in sorted(by_metric.items())}
    return figure("Family measurements", groups, "step")


def timeline_figure(history: list[dict[str, Any]], changes: list[dict[str, Any]]) -> Figure | None:
    """The quality figure over steps with each structural change's quality before -> after."""
    if not changes:
        return None
    metric = next((c["metric"] for c in changes if c.get("metric")), "val_loss")
    rows = [r for r in history if isinstance(r.get("step"), int) and number(r.get(metric)) is not None]
    xs, ys = [r["step"] for r in rows], [number(r.get(metric)) for r in rows]
    data: list[Trace] = [line(metric, xs, ys, line={"color": "#888"})]
    seg = {True: ([], [], []), False: ([], [], [])}
    marks: tuple[list[Any], list[Any], list[str]] = ([], [], [])
    for c in changes:
        before, after, step = number(c.get("before")), number(c.get("after")), c.get("step")
        if not isinstance(step, int) or before is None:
            continue
        text = c.get("text", "")
        if after is None:
            marks[0].append(step)
            marks[1].append(before)
            marks[2].append(text)
            continue
        end = _step_after(history, c, after, step)
        x, y, t = seg[bool(c.get("harmful"))]
        x += [step, end, None]
        y += [before, after, None]
        t += [text, text, ""]
    for harmful, (x, y, t) in seg.items():
        if x:
            data.append({"type": "scatter", "mode": "lines+markers", "x": x, "y": y, "text": t,
                         "hoverinfo": "text", "name": "harmful change" if harmful else "change (not harmful)",
                         "line": {"color": "#d62728" if harmful else "#2ca02c", "width": 3}})
    if marks[0]:
        data.append({"type": "scatter", "mode": "markers", "x": marks[0], "y": marks[1], "text": marks[2],
                     "hoverinfo": "text", "name": "change (not settled)", "marker": {"symbol": "x", "size": 9}})
    fig = figure("Structural changes: quality before -> after", {}, "step", metric)
    fig["data"] = data
    return fig


def _step_after(history: list[dict[str, Any]], change: dict[str, Any], after: float, default: int) -> int:
    """Step count of the evaluation whose quality figure is the change's "after" (``default`` if not found)."""
    epoch, metric = change.get("epoch"), change.get("metric") or "val_loss"
    if not isinstance(epoch, int):
        return default
    for row in history:
        e, v, step = row.get("epoch"), number(row.get(metric)), row.get("step")
        if isinstance(e, int) and e >= epoch and v is not None and abs(v - after) <= 1e-9 * max(1.0, abs(after)):
            return step if isinstance(step, int) else default
    return default

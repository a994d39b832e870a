"""Plotly figures for the managers' dashboards, built on the server.

Each chart carries its numbers as a table (the same rows its CSV download holds). Figures leave
the server as JSON inside a `<script type="application/json">` element; static/js/charts.js draws
them with the plotly.js served from our static files (the CSP allows no inline script).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import plotly.graph_objects as go
from django.utils.safestring import SafeString, mark_safe

OK, WARN, DANGER, ACCENT, MUTED = "#12795b", "#b25e09", "#b42318", "#2f5bea", "#667085"
SERIES = [ACCENT, DANGER, OK, WARN, "#7a5af8", MUTED]
LAYOUT = {
    "template": "none",
    "font": {"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12, "color": "#1d2330"},
    "margin": {"l": 56, "r": 16, "t": 24, "b": 48},
    "height": 320,
    "paper_bgcolor": "#ffffff",
    "plot_bgcolor": "#ffffff",
    "xaxis": {"gridcolor": "#eef2f7", "zeroline": False, "automargin": True},
    "yaxis": {"gridcolor": "#eef2f7", "zeroline": False, "automargin": True},
    "legend": {"orientation": "h", "y": -0.22},
    "hovermode": "x unified",
}


def utc(value: datetime | date | None) -> str | None:
    """plotly.js ignores offsets: every time leaves the server as naive UTC (the axes say UTC)."""
    if value is None or not isinstance(value, datetime):
        return value.isoformat() if value is not None else None
    return (value.astimezone(UTC) if value.tzinfo else value).strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Chart:
    key: str
    title: str
    figure: go.Figure
    columns: Sequence[str]
    rows: list[Sequence[object]]
    note: str = ""
    params: dict = field(default_factory=dict)  # what the CSV link passes back (plan, days)

    @property
    def dom_id(self) -> str:
        return f"chart-{self.key}"

    @property
    def traces(self) -> int:
        return len(self.figure.data)

    def figure_json(self) -> SafeString:
        """The figure as JSON that is safe inside a <script> element."""
        text = self.figure.to_json()
        return mark_safe(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))

    @property
    def cells(self) -> list[list[object]]:
        """The rows as the table and the CSV show them: times in UTC, ISO-like."""
        return [[utc(v) if isinstance(v, (datetime, date)) else v for v in row] for row in self.rows]

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(self.cells)
        return buffer.getvalue()


def figure(**layout: object) -> go.Figure:
    merged = json.loads(json.dumps(LAYOUT))
    for key, value in layout.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return go.Figure(layout=merged)


def bars(key: str, title: str, labels: Sequence[str], series: dict[str, Sequence[float]], *, columns: Sequence[str],
         rows: list[Sequence[object]], y_title: str = "", stacked: bool = False, colors: Sequence[str] = SERIES,
         note: str = "") -> Chart:
    fig = figure(barmode="stack" if stacked else "group", yaxis={"title": {"text": y_title}}, hovermode="closest")
    for (name, values), color in zip(series.items(), colors, strict=False):
        fig.add_trace(go.Bar(name=name, x=list(labels), y=list(values), marker_color=color))
    return Chart(key, title, fig, columns, rows, note)


def timeline(key: str, title: str, series: dict[str, tuple[Sequence[datetime | date], Sequence[float]]], *,
             columns: Sequence[str], rows: list[Sequence[object]], y_title: str = "",
             modes: dict[str, str] | None = None, note: str = "") -> Chart:
    daily = all(not isinstance(t, datetime) for times, _ in series.values() for t in times)
    xaxis = {"title": {"text": "UTC"}, "type": "date"}
    if daily:
        xaxis.update(title={"text": "day (UTC)"}, tickformat="%Y-%m-%d", dtick=86_400_000)
    fig = figure(xaxis=xaxis, yaxis={"title": {"text": y_title}})
    for (name, (times, values)), color in zip(series.items(), SERIES, strict=False):
        mode = (modes or {}).get(name, "lines+markers")
        if mode == "bars":
            fig.add_trace(go.Bar(name=name, x=[utc(t) for t in times], y=list(values), marker_color=color))
        else:
            fig.add_trace(go.Scatter(name=name, x=[utc(t) for t in times], y=list(values), mode=mode,
                                     line={"color": color}, marker={"size": 6}))
    return Chart(key, title, fig, columns, rows, note)


@dataclass(frozen=True)
class Rule:
    """A threshold drawn across a signal chart."""

    label: str
    threshold: float
    kind: str  # "criterion" | "trigger"
    dash: str = "dash"


@dataclass(frozen=True)
class Mark:
    """A moment (ring boundary) or a window (context tag) drawn on a signal chart."""

    label: str
    start: datetime
    end: datetime | None = None


def signal_chart(key: str, title: str, unit: str, points: Sequence[tuple[datetime, float, float, float, int]],
                 rules: Sequence[Rule], rings: Sequence[Mark], tags: Sequence[Mark], *, note: str = "") -> Chart:
    """A metric over time (mean per bucket, with the range of its samples) against its thresholds,
    ring boundaries as vertical lines and context-tag windows shaded."""
    fig = figure(xaxis={"title": {"text": "UTC"}, "type": "date"}, yaxis={"title": {"text": unit}})
    times = [utc(p[0]) for p in points]
    fig.add_trace(go.Scatter(name="range (min–max)", x=times + times[::-1],
                             y=[p[3] for p in points] + [p[2] for p in points][::-1], fill="toself",
                             fillcolor="rgba(47,91,234,0.12)", line={"width": 0}, hoverinfo="skip", showlegend=True))
    fig.add_trace(go.Scatter(name="mean", x=times, y=[p[1] for p in points], mode="lines+markers",
                             line={"color": ACCENT, "width": 2}, marker={"size": 4}))
    if points:
        for rule in rules:
            color = DANGER if rule.kind == "trigger" else OK
            fig.add_trace(go.Scatter(name=rule.label, x=[times[0], times[-1]], y=[rule.threshold, rule.threshold],
                                     mode="lines", line={"color": color, "dash": rule.dash, "width": 1.5}))
    shapes, annotations = [], []
    for tag in tags:
        shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": utc(tag.start), "x1": utc(tag.end),
                       "y0": 0, "y1": 1, "fillcolor": "rgba(178,94,9,0.14)", "line": {"width": 0}, "layer": "below"})
        annotations.append({"x": utc(tag.start), "y": 1, "xref": "x", "yref": "paper", "text": tag.label,
                            "showarrow": False, "xanchor": "left", "yanchor": "bottom",
                            "font": {"color": WARN, "size": 10}})
    for ring in rings:
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": utc(ring.start), "x1": utc(ring.start),
                       "y0": 0, "y1": 1, "line": {"color": MUTED, "dash": "dot", "width": 1}})
        annotations.append({"x": utc(ring.start), "y": 0, "xref": "x", "yref": "paper", "text": ring.label,
                            "showarrow": False, "xanchor": "left", "yanchor": "bottom", "textangle": -90,
                            "font": {"color": MUTED, "size": 10}})
    fig.update_layout(shapes=shapes, annotations=annotations)
    rows = [(p[0], p[1], p[2], p[3], p[4]) for p in points]
    return Chart(key, title, fig, ("time (UTC)", "mean", "min", "max", "samples"), rows, note)

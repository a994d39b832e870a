"""Plotly figures for the managers' dashboards, built on the server.

Each chart carries its numbers as a table (the same rows its CSV download holds). Figures leave
the server as JSON inside a `<script type="application/json">` element; static/js/charts.js draws
them with the plotly.js served from our static files (the CSP allows no inline script).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from functools import cached_property

import plotly.graph_objects as go
from django.utils.safestring import SafeString, mark_safe

OK, WARN, DANGER, ACCENT, MUTED, VIOLET = "#12795b", "#b25e09", "#b42318", "#2f5bea", "#667085", "#7a5af8"
SERIES = [ACCENT, DANGER, OK, WARN, VIOLET, MUTED]
# One colour per series name on every chart (what is in parentheses does not count): a reader who
# learnt that red is "breaches" on one chart never finds it meaning something else on the next.
COLORS = {
    "requests": ACCENT, "pending": WARN, "breaches": DANGER, "escalations": DANGER,
    "median": ACCENT, "90th percentile": VIOLET,
    "false positive": DANGER, "overridden": WARN,
    "each rollback": DANGER, "trend": MUTED,
    "exposure %": ACCENT, "exposed now %": ACCENT, "planned %": MUTED,
    "mean": ACCENT,
}
LAYOUT = {
    "template": "none",
    "font": {"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12, "color": "#1d2330"},
    "margin": {"l": 56, "r": 16, "t": 16, "b": 48},
    "height": 340,
    "paper_bgcolor": "#ffffff",
    "plot_bgcolor": "#ffffff",
    "xaxis": {"gridcolor": "#eef2f7", "zeroline": False, "automargin": True},
    "yaxis": {"gridcolor": "#eef2f7", "zeroline": False, "automargin": True},
    # Above the plot, where no axis label or title is: a legend below covers the x labels.
    "legend": {"orientation": "h", "x": 0, "xanchor": "left", "y": 1.02, "yanchor": "bottom"},
    "hovermode": "x unified",
}
DAY_MS = 86_400_000
# Date ticks as a person reads them at each zoom: never milliseconds, the day once it matters.
TIME_TICKS = [
    {"dtickrange": [None, 60_000], "value": "%H:%M:%S"},
    {"dtickrange": [60_000, DAY_MS], "value": "%H:%M<br>%b %-d"},
    {"dtickrange": [DAY_MS, None], "value": "%b %-d"},
]
MIN_SPAN = timedelta(hours=1)  # a time axis never spans less: one point is not drawn over 2 ms


def color_of(name: str, position: int) -> str:
    return COLORS.get(name.split(" (", 1)[0].strip(), SERIES[position % len(SERIES)])


def label(text: object) -> str:
    """Text plotly draws (names, categories, annotations) is its pseudo-HTML: markup a person typed
    (a tag's reason, a release name) is shown as typed, never made a link."""
    return str(text).replace("<", "&lt;")


def _nice(step: float) -> float:
    """1, 2 or 5 times a power of ten, at least `step`."""
    power = 10 ** math.floor(math.log10(step)) if step > 0 else 1
    return next(m * power for m in (1, 2, 5, 10) if m * power >= step)


def count_axis(values: Sequence[float]) -> dict:
    """A y axis of whole numbers from 0: ticks 1, 2, 5, 10 … apart, never 0.5 requests."""
    top = max([v for v in values if v is not None] or [0])
    return {"rangemode": "tozero", "tick0": 0, "dtick": max(1, int(_nice(top / 5))) if top > 5 else 1,
            "tickformat": ",d"}


def time_axis(times: Sequence[datetime | date], title: str = "UTC") -> dict:
    """A date axis over `times` with readable ticks: days for daily data (one tick a day at most),
    hours and minutes otherwise, at least MIN_SPAN wide."""
    axis: dict = {"type": "date", "title": {"text": title}}
    if not times:
        return axis | {"tickformatstops": TIME_TICKS}
    first, last = min(times), max(times)
    if all(not isinstance(t, datetime) for t in times):  # whole days: a tick a day at most, on midnight
        days = (last - first).days + 1
        midnight = datetime.combine(first, dt_time.min)
        return axis | {"title": {"text": "day (UTC)"}, "tickformat": "%b %-d", "tick0": utc(midnight),
                       "dtick": DAY_MS * (int(_nice(days / 8)) if days > 8 else 1),
                       "range": [utc(midnight - timedelta(hours=12)),
                                 utc(datetime.combine(last, dt_time.min) + timedelta(hours=12))]}
    pad = max((last - first) * 0.04, (MIN_SPAN - (last - first)) / 2, timedelta(0))
    return axis | {"range": [utc(first - pad), utc(last + pad)], "tickformatstops": TIME_TICKS}


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

    @cached_property
    def cells(self) -> list[list[object]]:
        """The rows as the table and the CSV show them: times in UTC, ISO-like."""
        return [[utc(v) if isinstance(v, (datetime, date)) else v for v in row] for row in self.rows]

    def table_body(self) -> SafeString:
        """The numbers table's rows as HTML (escaped): a month of hourly buckets is thousands of
        cells, too many for a template loop on every page load."""
        cell = "<td>{}</td>".format
        return mark_safe("\n".join(  # noqa: S308 (every value is escaped here)
            "<tr>" + "".join(cell("—" if value is None else html.escape(str(value))) for value in row) + "</tr>"
            for row in self.cells))

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
         rows: list[Sequence[object]], y_title: str = "", stacked: bool = False, integers: bool = False,
         note: str = "") -> Chart:
    """Bars per category; `integers`: the values are counts (whole-number axis)."""
    yaxis: dict = {"title": {"text": y_title}, "rangemode": "tozero"}
    if integers:
        totals = ([sum(v or 0 for v in column) for column in zip(*series.values(), strict=True)] if stacked
                  else [v for values in series.values() for v in values])
        yaxis |= count_axis(totals)
    fig = figure(barmode="stack" if stacked else "group", yaxis=yaxis, hovermode="closest",
                 xaxis={"type": "category"})
    for position, (name, values) in enumerate(series.items()):
        fig.add_trace(go.Bar(name=label(name), x=[label(x) for x in labels], y=list(values),
                             marker_color=color_of(name, position)))
    return Chart(key, title, fig, columns, rows, note)


def timeline(key: str, title: str, series: dict[str, tuple[Sequence[datetime | date], Sequence[float]]], *,
             columns: Sequence[str], rows: list[Sequence[object]], y_title: str = "",
             modes: dict[str, str] | None = None, integers: bool = False, note: str = "") -> Chart:
    """Series over time (days or moments); `integers`: the values are counts (whole-number axis)."""
    times = [t for ts, _ in series.values() for t in ts]
    yaxis: dict = {"title": {"text": y_title}, "rangemode": "tozero"}
    if integers:
        yaxis |= count_axis([v for _, values in series.values() for v in values])
    fig = figure(xaxis=time_axis(times), yaxis=yaxis)
    bar_series = sum(1 for name in series if (modes or {}).get(name) == "bars")
    daily = bool(times) and all(not isinstance(t, datetime) for t in times)
    for position, (name, (moments, values)) in enumerate(series.items()):
        mode = (modes or {}).get(name, "lines+markers")
        color = color_of(name, position)
        if mode == "bars":
            # A day's bar is most of the day wide, whatever the number of days (one day alone too).
            width = {"width": DAY_MS * 0.8 / bar_series} if daily else {}
            fig.add_trace(go.Bar(name=label(name), x=[utc(t) for t in moments], y=list(values), marker_color=color,
                                 **width))
        else:
            fig.add_trace(go.Scatter(name=label(name), x=[utc(t) for t in moments], y=list(values), mode=mode,
                                     line={"color": color}, marker={"size": 6, "color": color}))
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
    moments = [p[0] for p in points]
    fig = figure(xaxis=time_axis(moments), yaxis={"title": {"text": label(unit)}})
    times = [utc(p[0]) for p in points]
    fig.add_trace(go.Scatter(name="range (min–max)", x=times + times[::-1],
                             y=[p[3] for p in points] + [p[2] for p in points][::-1], fill="toself",
                             fillcolor="rgba(47,91,234,0.12)", line={"width": 0}, hoverinfo="skip", showlegend=True))
    fig.add_trace(go.Scatter(name="mean", x=times, y=[p[1] for p in points], mode="lines+markers",
                             line={"color": ACCENT, "width": 2}, marker={"size": 4}))
    if points:
        for rule in rules:
            color = DANGER if rule.kind == "trigger" else OK
            fig.add_trace(go.Scatter(name=label(rule.label), x=[times[0], times[-1]],
                                     y=[rule.threshold, rule.threshold], mode="lines",
                                     line={"color": color, "dash": rule.dash, "width": 1.5}))
    # Windows and marks are drawn within the samples' time span: a tag that ends next week does not
    # stretch the axis into the future, one that started before the first sample starts at it.
    first, last = (min(moments), max(moments)) if moments else (None, None)
    shapes, annotations = [], []
    for tag in tags:
        start, end = tag.start, tag.end or tag.start
        if first is not None:
            if end < first or start > last:
                continue
            start, end = max(start, first), min(end, last)
        shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": utc(start), "x1": utc(end),
                       "y0": 0, "y1": 1, "fillcolor": "rgba(178,94,9,0.14)", "line": {"width": 0}, "layer": "below"})
        annotations.append({"x": utc(start), "y": 1, "xref": "x", "yref": "paper", "text": label(tag.label),
                            "showarrow": False, "xanchor": "left", "yanchor": "top",
                            "font": {"color": WARN, "size": 10}, "bgcolor": "rgba(255,255,255,0.7)"})
    for ring in rings:
        if first is not None and not first <= ring.start <= last:
            continue
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": utc(ring.start), "x1": utc(ring.start),
                       "y0": 0, "y1": 1, "line": {"color": MUTED, "dash": "dot", "width": 1}})
        annotations.append({"x": utc(ring.start), "y": 0, "xref": "x", "yref": "paper", "text": label(ring.label),
                            "showarrow": False, "xanchor": "left", "yanchor": "bottom", "textangle": -90,
                            "font": {"color": MUTED, "size": 10}})
    fig.update_layout(shapes=shapes, annotations=annotations)
    rows = [(p[0], p[1], p[2], p[3], p[4]) for p in points]
    return Chart(key, title, fig, ("time (UTC)", "mean", "min", "max", "samples"), rows, note)

"""The managers' charts as plotly.js draws them in Chromium: counts on whole-number axes, time axes
with readable ticks (never milliseconds), one colour per series on every chart, legends above the
plot (never over its labels), and no time axis stretched into the future by a context tag."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from rollouts import tags
from tests.dashboards.conftest import manager, story  # noqa: F401 (the dashboards' story)
from tests.e2e.conftest import FACTORY_PASSWORD, browser, login, page  # noqa: F401 (shared fixtures)

pytestmark = pytest.mark.browser

SLOW_PAGE_MS = 60_000  # plotly.js is 4.6 MB of script
DRAWN = "() => [...document.querySelectorAll('[data-chart]')].every(el => el.dataset.drawn === 'done')"
READ = """() => Object.fromEntries([...document.querySelectorAll("[data-chart]")].map(el => {
  const plot = el.querySelector(".nsewdrag").getBoundingClientRect();
  const legend = el.querySelector(".legend");
  return [el.id.replace("chart-", ""), {
    traces: el.data.map(t => ({name: t.name, color: (t.marker && t.marker.color) || (t.line && t.line.color)})),
    xType: el._fullLayout.xaxis.type, xRange: el._fullLayout.xaxis.range,
    xTicks: [...el.querySelectorAll(".xtick text")].map(t => t.textContent),
    yTicks: [...el.querySelectorAll(".ytick text")].map(t => t.textContent),
    legendAbove: !legend || legend.getBoundingClientRect().bottom <= plot.top + 2,
  }];
}))"""
COUNTS = ("sla-pending", "sla-breaches", "sla-escalations", "false-positives", "false-positives-over-time")


def charts_on(page, url: str) -> dict:  # noqa: F811
    page.goto(url, timeout=SLOW_PAGE_MS)
    page.wait_for_function(DRAWN, timeout=SLOW_PAGE_MS)
    return page.evaluate(READ)


def test_charts_have_whole_counts_readable_times_one_colour_per_series_and_legends_above(
        page, manager, story):  # noqa: F811
    tags.create_context_tag(actor=story.plan.created_by, workflow=story.plan.workflow,  # every plan of the workflow
                            kind="expected_latency_increase", expected_change_percent=Decimal(5),
                            starts_at=datetime.now(UTC) - timedelta(minutes=5),
                            ends_at=datetime.now(UTC) + timedelta(days=2), reason="a new model for two days")
    login(page, manager.username, FACTORY_PASSWORD)
    drawn = charts_on(page, "/rollouts/dashboards/")
    drawn |= charts_on(page, f"/rollouts/dashboards/plans/{story.plan.pk}/")
    assert {"sla-pending", "sla-breaches", "time-to-containment", "signal-latency_p95_ms"} <= set(drawn)

    colours: dict[str, set[str]] = {}
    for key, chart in drawn.items():
        assert chart["legendAbove"], f"{key}: the legend covers the plot"
        if key in COUNTS:
            whole = all(re.fullmatch(r"\d[\d,]*", tick) for tick in chart["yTicks"])
            assert chart["yTicks"] and whole, (key, chart["yTicks"])
        if chart["xType"] == "date":
            assert not any(re.search(r"\d:\d\d\.\d", t) for t in chart["xTicks"]), (key, chart["xTicks"])
            assert len(chart["xTicks"]) == len(set(chart["xTicks"])), (key, chart["xTicks"])
        for trace in chart["traces"]:
            if trace["color"]:
                colours.setdefault(trace["name"].split(" (")[0], set()).add(trace["color"])
    assert {name: c for name, c in colours.items() if len(c) > 1} == {}
    assert colours["false positive"] == {"#b42318"} and colours["overridden"] == {"#b25e09"}

    # The tag ends in 2 days; the latency axis ends with the samples (the rollback, 80 min ago).
    end = datetime.fromisoformat(drawn["signal-latency_p95_ms"]["xRange"][1][:19]).replace(tzinfo=UTC)
    assert end < datetime.now(UTC), drawn["signal-latency_p95_ms"]["xRange"]

"""A manager and a containment owner in Chromium: charts drawn by plotly.js with their data, and a
post-facto review that moves the dashboard's false-positive count."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import FACTORY_PASSWORD, browser, login, page  # noqa: F401 (shared fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# plotly.js is 4.6 MB of script: on a busy machine the first page that loads it takes a while.
SLOW_PAGE_MS = 60_000
DRAWN = "() => [...document.querySelectorAll('[data-chart]')].every(el => el.dataset.drawn === 'done')"
POINTS = ("() => Object.fromEntries([...document.querySelectorAll('[data-chart]')]"
          ".map(el => [el.id, el.data.map(t => (t.y || []).length)]))")
FALSE_POSITIVES = ("() => document.getElementById('chart-false-positives').data"
                   ".map(t => (t.y || []).reduce((a, b) => a + b, 0))")


def show(page, url: str) -> dict:  # noqa: F811
    page.goto(url, timeout=SLOW_PAGE_MS)
    page.wait_for_function(DRAWN, timeout=SLOW_PAGE_MS)
    return page.evaluate(POINTS)


def test_manager_reads_charts_and_a_review_moves_the_false_positive_count(page, browser, live_server, manager,  # noqa: F811
                                                                         containment_owner, story):
    login(page, manager.username, FACTORY_PASSWORD)
    points = show(page, f"/rollouts/dashboards/plans/{story.plan.pk}/")
    assert set(points) == {"chart-exposure", "chart-signal-cost_per_task", "chart-signal-error_rate",
                           "chart-signal-latency_p95_ms", "chart-signal-quality_score"}
    assert points["chart-signal-latency_p95_ms"][1] == story.latency_samples  # the mean trace
    latency = page.locator("#chart-signal-latency_p95_ms")
    assert latency.locator(".scatterlayer .trace").count() >= 3  # range, mean, thresholds
    assert latency.locator(".scatterlayer .trace .points path").count() == story.latency_samples
    expect(latency.locator(".annotation-text").last).to_have_text("rolled back")

    points = show(page, "/rollouts/dashboards/")
    assert points["chart-time-to-containment"] == [1, 1] and sum(points["chart-sla-pending"]) == 6
    assert page.locator("#chart-sla-pending .barlayer .point").count() == 6
    assert page.evaluate(FALSE_POSITIVES) == [0, 1]  # the overridden rollback only

    owner = browser.new_context(base_url=live_server.url).new_page()
    login(owner, containment_owner.username, FACTORY_PASSWORD)
    owner.goto("/rollouts/reviews/")
    card = owner.locator(f"#review-{story.review.pk}")
    expect(card).to_contain_text("latency_p95_ms > 800 sustained for 2 min")
    card.locator("input[value=false_positive]").check()
    card.locator("button").click()
    expect(card.locator(".errors")).to_contain_text("Say why it was a false positive")
    card.locator("select[name=reason]").select_option("noise")
    card.locator("button").click()
    expect(owner.locator(f"#review-{story.review.pk}")).to_contain_text("False positive")
    owner.context.close()

    show(page, "/rollouts/dashboards/")
    assert page.evaluate(FALSE_POSITIVES) == [1, 1]

"""The plan editor in Chromium: every input of a ring, criterion and trigger row has its label, and
"Add a ring" adds a labelled row in place (no reload, what was typed stays) that is saved with the
plan. People who cannot write a plan are not offered the form."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from rollouts.models import RolloutPlan
from tests.e2e.conftest import FACTORY_PASSWORD, browser, login, page  # noqa: F401 (shared fixtures)
from tests.rollouts.conftest import release_manager  # noqa: F401

pytestmark = pytest.mark.browser

UNLABELED = """() => [...document.querySelectorAll("form.plan-editor input, form.plan-editor select")]
    .filter(el => el.type !== "hidden" && !el.closest("template") && !(el.labels && el.labels.length))
    .map(el => el.name)"""


def test_add_a_ring_adds_a_labelled_row_in_place_and_it_is_saved(page, release_manager, auditor):  # noqa: F811
    login(page, release_manager.username, FACTORY_PASSWORD)
    page.goto("/rollouts/new/")
    assert page.evaluate(UNLABELED) == []
    page.get_by_label("Name").fill("Refund prompt v7")
    page.get_by_label("Release version").fill("refund-v7")
    page.get_by_label("Stable version").fill("refund-v6")
    page.get_by_label("Fallback mode").select_option("human_review")
    page.get_by_label("Workflow").select_option("refund-agent")
    rings = page.locator("#rings-section fieldset.rule-row")
    expect(rings).to_have_count(2)
    rings.nth(0).get_by_label("Segment value").fill("payments-ops")

    page.evaluate("window.notReloaded = true")
    page.get_by_role("button", name="Add a ring").click()
    expect(rings).to_have_count(3)
    assert page.evaluate("window.notReloaded === true")  # the same page: nothing was sent
    expect(page.locator("input[name=rings-TOTAL_FORMS]")).to_have_value("3")
    expect(rings.nth(2).locator("legend")).to_have_text("Ring 2")
    expect(rings.nth(0).get_by_label("Segment value")).to_have_value("payments-ops")
    assert page.evaluate(UNLABELED) == []

    for ring, (kind, value, percent) in ((1, ("customer_group", "partners", "100")),
                                         (2, ("traffic_slice", "all", "25"))):
        row = rings.nth(ring)
        row.get_by_label("Segment kind").select_option(kind)
        row.get_by_label("Segment value").fill(value)
        row.get_by_label("Exposure (%)").fill(percent)
        row.get_by_label("Minimum soak (min)").fill("30")
    criterion = page.locator("#criteria-section fieldset.rule-row").first
    criterion.get_by_label("Metric").select_option("cost_per_task")
    criterion.get_by_label("Operator").select_option("lte")
    criterion.get_by_label("Threshold").fill("0.04")
    criterion.get_by_label("Window (min)").fill("30")
    criterion.get_by_label("Minimum samples").fill("20")
    trigger = page.locator("#triggers-section fieldset.rule-row").first
    trigger.get_by_label("Metric").select_option("latency_p95_ms")
    trigger.get_by_label("Operator").select_option("gt")
    trigger.get_by_label(re.compile(r"^Threshold")).fill("1200")
    trigger.get_by_label("Sustained for (min)").fill("5")
    trigger.get_by_label("Minimum samples").fill("3")
    trigger.get_by_label("Severity").select_option("critical")
    with page.expect_navigation():
        page.get_by_role("button", name="Save plan").click()

    plan = RolloutPlan.objects.get(release_version="refund-v7")
    assert page.url.endswith(plan.get_absolute_url())
    assert [r.segment for r in plan.rings.order_by("order")] == [
        "internal_team:payments-ops", "customer_group:partners", "traffic_slice:all"]

    page.context.clear_cookies()
    login(page, auditor.username, FACTORY_PASSWORD)
    response = page.goto("/rollouts/new/")
    assert response.status == 403
    expect(page.locator("main h1")).to_have_text("You may not open this")
    assert page.locator("form.plan-editor").count() == 0

"""A rollout's page in Chromium: the override window of a proposed rollback is counted down there
and can be approved or overridden there, worded as what happens; the containment panel follows
the rollout (a rollback the executor finished) within one refresh; the evidence of the request
reads as checks with their metric, threshold, observed value, window and verdict, on the request
page and in the evidence bundle, never as printed Python.

The worker is not started: what it would do (the approval's outcome, the executor's attempt) is
called here, the way tests/rollouts/test_tiers.py does, and the page must notice by itself."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from playwright.sync_api import expect

from core import clock
from rollouts import evaluator, executors, proposals, signals
from rollouts.models import Metric, RolloutAction, RolloutPlan
from tests.e2e.conftest import FACTORY_PASSWORD, browser, login, page  # noqa: F401 (shared fixtures)
from tests.rollouts.conftest import live_plan, make_plan, owner, release_manager  # noqa: F401

pytestmark = pytest.mark.browser

SPIKE = (808, 861, 890, 909)  # the seeds' latency rise; the plan's critical trigger says > 800
RULES = {"latency_p95_ms > 800 sustained for 2 min", "error_rate > 0.05 sustained for 2 min",
         "quality_score ≥ 0.8 over 10 min", "cost_per_task ≤ 0.05 over 10 min"}  # tests/rollouts/conftest.plan_spec
REFRESH_MS = 4_000  # the page refreshes every second here; room for a busy machine


@pytest.fixture(autouse=True)
def _quick_refresh(settings):
    settings.ROLLOUT_PAGE_REFRESH_SECONDS = 1


def breach_at_tier_2(plan: RolloutPlan) -> RolloutAction:
    """Latency rises beyond the critical trigger of a tier-2 workflow: a rollback is proposed in an
    override window (what rollouts.evaluator does on the worker)."""
    workflow = plan.workflow
    workflow.autonomy_tier, workflow.off_hours_tier = 2, None
    workflow.save(update_fields=["autonomy_tier", "off_hours_tier"])
    now = clock.now()
    metric_id = Metric.objects.get(slug="latency_p95_ms").pk
    signals.ingest_signals(plan, [(metric_id, 0, "", now - timedelta(seconds=10 * (len(SPIKE) - 1 - i)), value)
                                  for i, value in enumerate(SPIKE)])
    evaluator.evaluate_plan(plan.pk)
    action = RolloutAction.objects.select_related("approval_request").get(plan=plan, state="pending_approval")
    assert action.approval_request.mode == "override_window"
    return action


def test_the_override_window_is_counted_down_and_decided_on_the_plan_page(page, live_plan, owner):  # noqa: F811
    action = breach_at_tier_2(live_plan)
    request = action.approval_request
    login(page, owner.username, FACTORY_PASSWORD)
    page.goto(live_plan.get_absolute_url())

    card = page.locator(f"#pending-action-{action.pk}")
    expect(card).to_contain_text("Override window: it will roll back to prompt-v1")
    expect(card).to_contain_text("unless someone overrides it")
    expect(card).to_contain_text("latency_p95_ms > 800 sustained for 2 min")
    countdown = card.locator("time[data-countdown]")
    expect(countdown).to_have_text(re.compile(r"^1 min \d+ s left$"))
    first = countdown.inner_text()
    expect(countdown).not_to_have_text(first, timeout=3_000)  # it counts down in the page
    expect(card.get_by_role("button", name="Approve now: roll back to prompt-v1 at once")).to_be_visible()
    override = card.get_by_role("button", name="Override: keep prompt-v2 live")
    expect(override).to_be_visible()

    card.get_by_label(re.compile(r"^Justification")).fill("the load test on ring 0, not the release")
    card.get_by_label("Reason for an override").select_option("noise")
    with page.expect_navigation():
        override.click()
    assert page.url.endswith(live_plan.get_absolute_url())
    expect(page.locator(".messages")).to_contain_text(f"Request #{request.pk}: Overridden by {owner.username}")
    request.refresh_from_db()
    assert request.state == "overridden"
    assert request.decisions.get().reason == "noise"

    proposals.handle_approval_outcome(request.pk)  # what the worker does next: the rollback is cancelled
    expect(page.locator("#pending")).to_be_hidden(timeout=REFRESH_MS)
    expect(page.locator("#actions")).to_contain_text(re.compile("cancelled", re.IGNORECASE))
    live_plan.refresh_from_db()
    assert live_plan.state == "active"


def test_the_containment_panel_follows_a_rollback_within_one_refresh(page, live_plan, owner):  # noqa: F811
    login(page, owner.username, FACTORY_PASSWORD)
    page.goto(live_plan.get_absolute_url())
    panel = page.locator("#containment")
    expect(panel.get_by_role("button", name="Pause")).to_be_visible()
    panel.get_by_label("Reason", exact=True).fill("latency regression on ring 0")
    panel.get_by_role("button", name="Roll back").click()
    expect(panel).to_contain_text("Rollback: scheduled")
    expect(panel.locator(".under-way")).to_contain_text("Rollback under way")

    action = RolloutAction.objects.get(plan=live_plan, kind="rollback")
    executors.run(action.pk)  # the worker's attempt: the flag executor serves prompt-v1 again
    live_plan.refresh_from_db()
    assert live_plan.state == "rolled_back"
    expect(panel).to_contain_text("The rollout is rolled back", timeout=REFRESH_MS)
    for name in ("Pause", "Narrow exposure", "Engage fallback", "Roll back"):
        expect(panel.get_by_role("button", name=name)).to_have_count(0)
    expect(page.locator("#plan-state")).to_contain_text("rolled back")


def test_the_evidence_of_a_proposed_rollback_reads_as_checks(page, live_plan, auditor):  # noqa: F811
    action = breach_at_tier_2(live_plan)
    request = action.approval_request
    login(page, auditor.username, FACTORY_PASSWORD)
    for url in (request.get_absolute_url(), reverse("evidence:page", args=[request.pk])):
        page.goto(url)
        fired = page.locator("#rule-that-fired")
        expect(fired).to_contain_text("latency_p95_ms > 800 sustained for 2 min")
        expect(fired).to_contain_text("fired")
        facts = fired.locator("dt").all_inner_texts()
        assert {"Kind", "Metric", "Threshold", "Observed", "Window"} <= set(facts), url
        expect(fired.locator("dd").nth(facts.index("Threshold"))).to_have_text("> 800")
        expect(fired.locator("dd").nth(facts.index("Observed"))).to_contain_text("4 samples")
        expect(fired.locator("dd").nth(facts.index("Window"))).to_contain_text("UTC")
        checks = page.locator("table.evidence-checks")
        assert checks.locator("thead th").all_inner_texts() == ["Check (metric)", "Threshold", "Observed", "Window",
                                                                "Verdict"]
        rules = checks.locator("tbody tr td:first-child code").all_inner_texts()
        assert set(rules) == RULES, url
        text = page.locator("main").inner_text()
        for printed in ("{'", "[{", "'kind'", "rule_id", "window_start"):
            assert printed not in text, f"{url} prints {printed!r}"

"""The plan page in Chromium: a containment owner pauses, engages a fallback and rolls back (the
executor runs in a real worker, the page updates itself); a person without those duties cannot."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from rollouts.models import RolloutPlan
from tests.e2e.conftest import FACTORY_PASSWORD, browser, login, page  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
WAIT_MS = 20_000


def containment(page):  # noqa: F811
    return page.locator("#containment")


def test_a_containment_owner_pauses_engages_a_fallback_and_rolls_back_and_a_bystander_cannot(
        page, browser, live_server, live_plan, owner, bystander, celery, settings):  # noqa: F811
    settings.ROLLOUT_PAGE_REFRESH_SECONDS = 1
    url = live_plan.get_absolute_url()

    # Oscar is a containment owner in scope of the workflow, without its duties.
    other = browser.new_context(base_url=live_server.url)
    oscar = other.new_page()
    login(oscar, "oscar", FACTORY_PASSWORD)
    oscar.goto(url)
    expect(containment(oscar)).to_contain_text("You hold no containment duty on refund-agent.")
    expect(containment(oscar).get_by_role("button")).to_have_count(0)
    token = next(c["value"] for c in other.cookies() if c["name"] == "csrftoken")
    forged = oscar.request.post(f"{url}actions/rollback/", form={"reason": "I think it is broken",
                                                                 "csrfmiddlewaretoken": token})
    assert forged.status == 403 and "Only an owner of the rollback duty" in forged.text()
    other.close()
    assert RolloutPlan.objects.get(pk=live_plan.pk).state == "active"

    # The worker and beat of the `celery` fixture run the executor.
    login(page, "olivia", FACTORY_PASSWORD)
    page.goto(url)
    panel = containment(page)
    panel.get_by_label("Reason").fill("Quality dip on support-ops, looking into it")
    panel.get_by_role("button", name="Pause").click()
    expect(panel).to_contain_text("Pause: succeeded")
    expect(page.locator("#plan-state")).to_contain_text("Paused")

    panel.get_by_label("Reason").fill("Answers are unreliable: read-only until fixed")
    panel.get_by_label("Fallback mode").select_option("read_only")
    panel.get_by_role("button", name="Engage fallback").click()
    expect(panel).to_contain_text("Fallback: scheduled")
    expect(page.locator("#plan-state")).to_contain_text("Fallback: read-only", timeout=WAIT_MS)

    panel.get_by_label("Reason").fill("Confirmed regression in v2")
    panel.get_by_role("button", name="Roll back").click()
    expect(panel).to_contain_text("Rollback: scheduled")
    expect(page.locator("#plan-state")).to_contain_text(re.compile("rolled back", re.I), timeout=WAIT_MS)
    expect(page.locator("#actions")).to_contain_text("#1 ok")

    assert RolloutPlan.objects.get(pk=live_plan.pk).state == "rolled_back"

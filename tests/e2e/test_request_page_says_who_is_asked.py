"""The request page says who is asked at each escalation level, and whether a level adds its
people to the earlier levels' or replaces them ("Ringfence as code" lets a policy do either): an
approver reads why she may, or may no longer, decide once the request escalated."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from approvals import services
from tests.e2e.conftest import FACTORY_PASSWORD, browser, login, office, page  # noqa: F401 (shared fixtures)

pytestmark = pytest.mark.browser


def ladder(workflow, admin_user, *, replaces: bool) -> None:
    services.define_policy(actor=admin_user, workflow=workflow, mode="gate", levels=[
        {"groups": ["approver"], "timeout_seconds": 600},
        {"groups": ["senior_approver"], "timeout_seconds": 1200, "replaces": replaces},
    ])


def test_the_request_page_says_whether_a_level_adds_or_replaces_approvers(page, office, workflow,  # noqa: F811
                                                                          admin_user):
    ladder(workflow, admin_user, replaces=True)
    request = services.create_request(workflow=workflow, kind="agent_action", action="refund_customer",
                                      parameters={"order": "A-1001"}, requester=office["agent"])
    login(page, "alice", FACTORY_PASSWORD)
    page.goto(request.get_absolute_url())
    who = page.locator("#escalation")
    expect(who).to_contain_text("Level 1 asks approvers.")
    expect(who.locator("li")).to_have_text(["Level 1: approvers for 10 min now",
                                            "Level 2: senior approvers for 20 min; replaces the earlier levels"])
    expect(who).to_contain_text("When the last level runs out: reject (the request expires).")
    expect(page.get_by_role("button", name="Approve", exact=True)).to_be_visible()

    services.escalate_request(request.pk, actor=office["alice"], reason="needs a senior look")
    page.reload()
    expect(who).to_contain_text("Level 2 replaces the earlier levels: only senior approvers decide now.")
    expect(page.get_by_role("button", name="Approve", exact=True)).to_have_count(0)  # alice is no longer asked

    ladder(workflow, admin_user, replaces=False)  # the open request follows its policy's levels as they are now
    page.reload()
    expect(who).to_contain_text("Level 2 adds senior approvers to the earlier levels: all of them can decide.")
    expect(who.locator("li").nth(1)).to_have_text(
        "Level 2: senior approvers for 20 min; added to the earlier levels now")
    expect(page.get_by_role("button", name="Approve", exact=True)).to_be_visible()

"""An approver's day in Chromium, a stale page in a second session (CON-06), and the queue with
JavaScript off."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from approvals import services
from approvals.models import ApprovalRequest, Decision
from tests.approvals.figures import report
from tests.e2e.conftest import FACTORY_PASSWORD, login

pytestmark = pytest.mark.browser
State = ApprovalRequest.State


def ask(office, workflow, action: str, **fields) -> ApprovalRequest:
    return services.create_request(
        workflow=workflow, kind=fields.pop("kind", "agent_action"), action=action, requester=office["agent"],
        parameters={"order": action}, confidence="0.9",
        evidence={"summary": f"{action} needs a person",
                  "metrics": [{"metric": "refund_amount", "value": 240, "operator": ">", "threshold": 50}]},
        **fields,
    )


def queue_ids(page) -> list[int]:
    return [int(x) for x in page.locator("tr.queue-row").evaluate_all("rows => rows.map(r => r.dataset.request)")]


def test_an_approvers_day(page, browser, live_server, office, workflow):
    window = ask(office, workflow, "roll_back", kind="rollback", mode="override_window")
    first = ask(office, workflow, "refund_big_order")
    second = ask(office, workflow, "refund_again")
    login(page, "alice", FACTORY_PASSWORD)
    page.goto("/approvals/")
    assert queue_ids(page) == [window.pk, first.pk, second.pk]  # the least time left first
    expect(page.locator(f'tr[data-request="{first.pk}"]')).to_contain_text("refund_amount 240 > 50")
    expect(page.locator(f'tr[data-request="{window.pk}"] time[data-countdown]')).to_have_text(re.compile(r"\d+ s left"))

    # The queue refreshes itself: a request arriving now shows up without a reload.
    arriving = ask(office, workflow, "refund_new")
    expect(page.locator(f'tr[data-request="{arriving.pk}"]')).to_be_visible(timeout=10_000)

    page.select_option("#id_kind", "rollback")  # filters apply in place and land in the address
    expect(page.locator("tr.queue-row")).to_have_count(1)
    expect(page).to_have_url(re.compile(r"kind=rollback"))
    page.select_option("#id_kind", "")
    expect(page.locator("tr.queue-row")).to_have_count(4)

    page.click(f'tr[data-request="{first.pk}"] a')
    page.click("#decision-panel button[value=approve]")
    expect(page.locator("#decision-panel")).to_contain_text("Approved by Alice at")
    expect(page.locator("#history")).to_contain_text("decided: approve")

    page.goto(f"/approvals/{second.pk}/")
    page.click("#decision-panel button[value=reject]")
    expect(page.locator("#decision-panel .errors")).to_contain_text("Say why")
    assert ApprovalRequest.objects.get(pk=second.pk).state == State.PENDING
    page.fill("#id_justification", "The order was refunded yesterday.")
    page.click("#decision-panel button[value=reject]")
    expect(page.locator("#decision-panel")).to_contain_text("Rejected by Alice at")
    expect(page.locator("#history")).to_contain_text("The order was refunded yesterday.")

    escalated = ask(office, workflow, "refund_partner_account")
    services.escalate_request(escalated.pk, actor=office["bob"], reason="A partner account: needs a senior.")
    senior = browser.new_context(base_url=live_server.url).new_page()
    try:
        login(senior, "sam", FACTORY_PASSWORD)
        senior.goto("/approvals/?mine=on")
        row = senior.locator(f'tr[data-request="{escalated.pk}"]')
        expect(row).to_contain_text("escalated · level 2")
        assert queue_ids(senior) == [escalated.pk]  # level-1 requests are not the senior's
        row.locator("a").click()
        senior.click("#decision-panel button[value=approve]")
        expect(senior.locator("#decision-panel")).to_contain_text("Approved by Sam at")
    finally:
        senior.context.close()
    assert ApprovalRequest.objects.get(pk=first.pk).state == State.APPROVED
    assert ApprovalRequest.objects.get(pk=second.pk).state == State.REJECTED
    assert ApprovalRequest.objects.get(pk=escalated.pk).state == State.APPROVED


def test_a_stale_page_is_told_who_decided(request, page, browser, live_server, office, workflow):
    """CON-06: Alice and Bob look at the same request; Alice approves; Bob's Reject changes nothing."""
    req = ask(office, workflow, "refund_disputed")
    login(page, "alice", FACTORY_PASSWORD)
    page.goto(f"/approvals/{req.pk}/")
    bob = browser.new_context(base_url=live_server.url).new_page()
    try:
        login(bob, "bob", FACTORY_PASSWORD)
        bob.goto(f"/approvals/{req.pk}/")
        page.click("#decision-panel button[value=approve]")
        expect(page.locator("#decision-panel")).to_contain_text("Approved by Alice at")
        bob.fill("#id_justification", "Looks like fraud to me.")
        started = time.perf_counter()
        bob.click("#decision-panel button[value=reject]")
        expect(bob.locator("#decision-panel .errors")).to_have_text(
            re.compile(r"Already approved by Alice at \d\d:\d\d\."))
        elapsed_ms = (time.perf_counter() - started) * 1000
        expect(bob.locator("#decision-panel button[value=reject]")).to_have_count(0)
    finally:
        bob.context.close()
    req.refresh_from_db()
    assert req.state == State.APPROVED
    assert list(Decision.objects.filter(request=req).values_list("verdict", flat=True)) == ["approve"]
    report(request, "CON-06", stale_answer="409 swapped in place", time_to_message_ms=round(elapsed_ms))


def test_the_queue_works_without_javascript(browser, live_server, office, workflow):
    req = ask(office, workflow, "refund_plain_html")
    context = browser.new_context(base_url=live_server.url, java_script_enabled=False)
    page = context.new_page()
    try:
        login(page, "alice", FACTORY_PASSWORD)
        page.goto("/approvals/")
        page.click(f'tr[data-request="{req.pk}"] a')
        page.click("#decision-panel button[value=reject]")  # empty justification: the page comes back, 422
        expect(page.locator("#decision-panel .errors")).to_contain_text("Say why")
        page.fill("#id_justification", "Not without a receipt.")
        with page.expect_navigation():
            page.click("#decision-panel button[value=reject]")
        assert page.url.endswith(f"/approvals/{req.pk}/")  # POST, redirect, GET
        expect(page.locator("#decision-panel")).to_contain_text("Rejected by Alice at")
    finally:
        context.close()

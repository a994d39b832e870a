"""The new-agent walk in Chromium: an administrator creates a workflow, declares the action its
agent will ask about with a rule, tries the rule, sets the escalation policy, names an owner for
every containment duty and issues the agent's token, all on the pages; the agent's first dispatch
is then answered by that rule. Every page of the walk is also looked at on a phone (390 px wide):
nothing may be wider than the screen."""

from __future__ import annotations

import json
import urllib.request

import pytest
from playwright.sync_api import expect

from audit.models import AuditEvent
from governance.models import ContainmentAssignment
from governance.permissions import Role
from tests import factories
from tests.e2e.conftest import FACTORY_PASSWORD, login

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
RULE = "double(params.amount) <= 50.0"


def dispatch(base_url: str, token: str, key: str, amount: float) -> tuple[int, dict]:
    body = json.dumps({"workflow": "invoice-agent", "action": "pay_invoice", "parameters": {"amount": amount}})
    request = urllib.request.Request(f"{base_url}/api/v1/dispatch", data=body.encode(), method="POST", headers={
        "Authorization": f"Bearer {token}", "Idempotency-Key": key, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def fits_a_phone(page, path: str, shots) -> None:
    page.set_viewport_size(PHONE)
    page.goto(path)
    page.screenshot(path=str(shots / f"{path.strip('/').replace('/', '_') or 'home'}.png"), full_page=True)
    # What sticks out of the screen, leaving out what a clipping or scrolling box holds.
    wide = page.evaluate("""() => {
        const clipped = e => { for (let a = e.parentElement; a; a = a.parentElement) {
            if (getComputedStyle(a).overflowX !== 'visible') return true; } return false; };
        return [...document.querySelectorAll('main *')]
            .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1 && !clipped(e))
            .map(e => e.tagName + (e.id ? '#' + e.id : '') + '.' + e.className).slice(0, 5); }""")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"] and not wide, f"{path} is {width} px wide on a phone: {wide}"


def test_an_administrator_sets_up_a_new_agent_and_its_first_dispatch_is_answered_by_the_rule(
        page, live_server, admin_user, tmp_path):
    olivia = factories.make_user("olivia", role=Role.CONTAINMENT_OWNER, first_name="Olivia")
    factories.make_user("rhea", role=Role.RELEASE_MANAGER, first_name="Rhea")
    login(page, "ada", FACTORY_PASSWORD)

    # A new workflow: the administrator who creates it sees it afterwards.
    page.goto("/workflows/")
    page.click("text=New workflow")
    page.fill("#id_slug", "invoice-agent")
    page.fill("#id_name", "Invoice agent")
    page.select_option("#id_environment", "production")
    page.select_option("#id_autonomy_tier", "2")
    page.click("button:has-text('Create workflow')")
    expect(page).to_have_url(f"{live_server.url}/workflows/invoice-agent/")
    expect(page.locator("h1")).to_contain_text("Invoice agent")
    expect(page.locator("#actions ~ p.empty")).to_contain_text("denied as an unknown action")

    # The action the agent will ask about.
    page.click("summary:has-text('Declare an action')")
    page.fill("#id_name", "pay_invoice")
    page.select_option("#id_risk", "high")
    page.click("button:has-text('Declare action')")
    expect(page).to_have_url(f"{live_server.url}/approvals/actions/invoice-agent/pay_invoice/")

    # A rule with a typo is refused next to the rule, then fixed.
    page.click("summary:has-text('Edit the live rules')")
    page.fill("#id_live-0-condition", "double(params.amount) <=")
    page.select_option("#id_live-0-outcome", "allow")
    page.click("button:has-text('Save live rules')")
    expect(page.locator("#live-rule-1 .errors")).to_contain_text("line 1, column")
    page.screenshot(path=str(tmp_path / "desktop_rule_refused.png"), full_page=True)
    page.fill("#id_live-0-condition", RULE)
    page.click("button:has-text('Save live rules')")
    expect(page.locator("ol[aria-label='Live rules in order']")).to_contain_text(f"Rule 1: {RULE} → allow")

    # Try it: which rule decides, and nothing is written.
    events = AuditEvent.objects.count()
    page.fill("#id_parameters", '{"amount": 20}')
    page.click("#try-it button:has-text('Try')")
    expect(page.locator("#trial")).to_contain_text("allowed_by_rule")
    expect(page.locator("#trial")).to_contain_text(f"Rule 1: {RULE} → allow")
    page.screenshot(path=str(tmp_path / "desktop_tried.png"), full_page=True)
    page.fill("#id_parameters", '{"amount": 20')
    page.click("#try-it button:has-text('Try')")
    expect(page.locator("#try-it .errors")).to_contain_text("Not JSON")
    assert AuditEvent.objects.count() == events

    # The escalation policy: approvers for 15 minutes, then the request is rejected.
    page.click("text=policies of invoice-agent")
    page.check("#id_levels-0-groups input[value=approver]")
    page.fill("#id_levels-0-timeout", "15")
    page.click("button:has-text('Save policy')")
    expect(page.locator("article.policy").first).to_contain_text("Level 1: approver")
    expect(page.locator("article.policy").first).to_contain_text("for 15 min")

    # An owner for every containment duty.
    page.goto("/workflows/invoice-agent/")
    page.click("text=Assign or remove owners")
    for duty in ContainmentAssignment.Duty.values:
        page.select_option("#id_user", "olivia")
        page.select_option("#id_duty", duty)
        page.click("#assign button:has-text('Assign')")
        expect(page.locator(f"#duty-{duty}")).to_contain_text("Olivia")
    assert ContainmentAssignment.objects.filter(workflow__slug="invoice-agent", user=olivia).count() == 6
    page.screenshot(path=str(tmp_path / "desktop_containment.png"), full_page=True)

    # The agent's service account and its token, shown once.
    page.goto("/workflows/invoice-agent/")
    page.click("text=Agents and tokens")
    page.fill("#id_name", "invoice-bot")
    page.select_option("#id_owner", "rhea")
    page.click("button:has-text('Create service account')")
    page.fill("#account-1 input[name=label], article.account input[name=label]", "production")
    page.click("button:has-text('Issue a token')")
    token = page.locator("#raw-token").inner_text().strip()
    page.screenshot(path=str(tmp_path / "desktop_token.png"), full_page=True)
    assert token.startswith("rf_")

    # The agent's first dispatch is answered by the rule; one above the limit waits for a person.
    status, answer = dispatch(live_server.url, token, "first-invoice", 20)
    assert status == 200 and (answer["decision"], answer["code"]) == ("allow", "allowed_by_rule"), answer
    assert answer["rule"]["condition"] == RULE and answer["execution"]["state"] == "granted"
    status, answer = dispatch(live_server.url, token, "big-invoice", 80)
    assert (answer["decision"], answer["code"]) == ("pending", "approval_required"), answer

    # Every page of the walk on a phone.
    for path in ("/workflows/", "/workflows/-/new/", "/workflows/invoice-agent/",
                 "/approvals/actions/invoice-agent/pay_invoice/", "/approvals/workflows/invoice-agent/escalation/",
                 "/workflows/invoice-agent/containment/", "/workflows/invoice-agent/scope/",
                 "/workflows/invoice-agent/service-accounts/", "/people/", "/rollouts/metrics/", "/approvals/"):
        fits_a_phone(page, path, tmp_path)
    print(f"new-agent walk: phone screenshots in {tmp_path}")

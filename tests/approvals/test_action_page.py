"""A governed action's page: its live and shadow rules in order, one line each, and the calls the
shadow rules would have answered differently. Out of scope: a recorded 404."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
import time_machine
from django.urls import reverse

from approvals import dispatch, services
from governance import services as governance
from governance.permissions import Role
from tests import factories

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)  # a Monday, inside business hours
URL = reverse("approvals:action", args=["refund-agent", "refund_customer"])


@pytest.fixture
def refund(workflow, admin_user):
    """Live: small refunds run, up to 5000 asked of one person. Shadow: the limit lowered to 100,
    and a senior approver needed above 1000."""
    action = governance.define_action(workflow.pk, actor=admin_user, name="refund_customer", risk="high",
                                      description="Refund an order to the customer's card.")
    services.set_action_rules(action.pk, actor=admin_user, rules=[
        {"condition": "params.amount <= 250", "outcome": "allow", "reason": "Small refunds are routine."},
        {"condition": "double(params.amount) <= 5000.0", "outcome": "approve", "quorum": 1},
        {"condition": "true", "outcome": "deny", "reason": "Refunds above 5000 go to finance."},
    ])
    services.set_action_rules(action.pk, actor=admin_user, shadow=True, rules=[
        {"condition": "params.amount <= 100", "outcome": "allow"},
        {"condition": "params.amount > 1000", "outcome": "approve", "quorum": 2, "approver_roles": ["senior_approver"]},
    ])
    return action


def call(agent, amount: int) -> dispatch.Answer:
    return dispatch.dispatch(account=agent, workflow="refund-agent", action="refund_customer",
                             parameters={"amount": amount}, evidence={})


def test_page_lists_live_and_shadow_rules_in_order_and_what_the_tier_does(client, approver, refund):
    client.force_login(approver)
    response = client.get(URL)
    html = response.content.decode()
    assert response.status_code == 200
    live = ["Rule 1: params.amount &lt;= 250 → allow", "Rule 2: double(params.amount) &lt;= 5000.0 → approve by 1",
            "Rule 3: true → deny: Refunds above 5000 go to finance."]
    shadow = ["Shadow rule 1: params.amount &lt;= 100 → allow",
              "Shadow rule 2: params.amount &gt; 1000 → approve by 2 incl. senior_approver"]
    positions = [html.index(line) for line in live + shadow]
    assert positions == sorted(positions)
    assert "Small refunds are routine." in html and "Refund an order to the customer&#x27;s card." in html
    assert "When none holds, the tier decides: high risk always needs 1 approval." in html
    assert "refund-agent is at tier 2 now." in html
    assert "Set by ada" in html
    assert "None yet: every call so far got the same answer from both." in html


def test_page_counts_shadow_differences_and_shows_the_last_twenty(client, approver, agent, refund):
    with time_machine.travel(T0, tick=False) as frozen:
        for amount in (50, 200, 3000):  # 50: both allow; 200: live allows, shadow asks the tier; 3000: see below
            call(agent, amount)
            frozen.shift(dt.timedelta(seconds=1))
        for _ in range(20):
            call(agent, 200)
            frozen.shift(dt.timedelta(seconds=1))
    client.force_login(approver)
    html = client.get(URL).content.decode()
    assert '<strong>22</strong> calls so far; the last 20 below.' in html
    rows = html.split('aria-label="Shadow differences"')[1].split("</tbody>")[0].count("<tr>") - 1  # minus the header
    assert rows == 20
    assert "allow (rule 1)" in html and "needs 1 approval (no rule: the tier decided)" in html
    assert "refund-bot" in html and "{&quot;amount&quot;: 200}" in html
    assert "2026-03-02 10:00:22" in html  # newest first
    assert "needs 1 approval (rule 2)" not in html  # 3000 fell off the last twenty


def test_a_difference_names_both_rules(client, approver, agent, refund):
    with time_machine.travel(T0, tick=False):
        call(agent, 3000)
    client.force_login(approver)
    html = client.get(URL).content.decode()
    assert "<strong>1</strong> call so far." in html
    assert "needs 1 approval (rule 2)" in html and "needs 2 approvals incl. senior_approver (rule 2)" in html


def test_workflow_page_links_each_action_to_its_page(client, approver, refund):
    client.force_login(approver)
    html = client.get(reverse("governance:workflow_detail", args=["refund-agent"])).content.decode()
    assert f'href="{URL}"' in html


def test_action_page_is_a_logged_404_outside_scope(client, refund, other_workflow, admin_user, caplog):
    outsider = factories.make_user("otto", role=Role.APPROVER)
    factories.scope(outsider, other_workflow)
    client.force_login(outsider)
    with caplog.at_level(logging.INFO, logger="ringfence.security"):
        assert client.get(URL).status_code == 404
    assert any("out-of-scope governed action" in r.getMessage() for r in caplog.records)
    governance.define_action(other_workflow.pk, actor=admin_user, name="disable_account", risk="low")
    assert client.get(reverse("approvals:action", args=["account-disable-agent", "disable_account"])).status_code == 200
    assert client.get(reverse("approvals:action", args=["account-disable-agent", "refund_customer"])).status_code == 404


def test_auditor_reads_every_action_page(client, auditor, refund):
    client.force_login(auditor)
    assert client.get(URL).status_code == 200

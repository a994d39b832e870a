"""The approval queue's part of the demo: requests close to their deadline, one escalated to the
senior approver, an override window counting down, and a history of decided requests.

Everything goes through the services, so the demo is audited like real use. Idempotent: every
demo request carries an idempotency key of the demo agent, and a round whose pending requests
are still open is left alone. Once they have all closed (their timers ran out since the last
seeding), seeding again opens a new round, so the story is there to click through each time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from django.contrib.auth.models import User
from django.db import transaction

from approvals import services
from approvals.models import ApprovalRequest
from governance.models import ServiceAccount, Workflow

KEY = "demo-queue-r{round}-{name}"
KEY_PATTERN = re.compile(r"^demo-queue-r(\d+)-")

# name, workflow, action, mode, quorum, parameters, evidence, confidence
PENDING = [
    ("refund-near-sla", "refund-agent", "refund_customer", "gate", 1,
     {"order": "A-10231", "amount": "420.00", "currency": "EUR"},
     {"summary": "Refund above the automatic limit for a repeat customer",
      "metrics": [{"metric": "refund_amount_eur", "value": 420, "operator": ">", "threshold": 250}],
      "links": [{"label": "Order A-10231", "url": "https://shop.example.com/orders/A-10231"}]}, "0.81"),
    ("disable-spam", "account-disable-agent", "disable_account", "gate", 2,
     {"account": "acct_77120", "reason": "spam"},
     {"summary": "412 messages in 10 minutes with identical links",
      "metrics": [{"metric": "messages_per_10m", "value": 412, "operator": ">", "threshold": 50, "window": "10m"},
                  {"metric": "abuse_score", "value": 0.97, "operator": ">", "threshold": 0.9}]}, "0.93"),
    ("voucher-window", "refund-agent", "issue_voucher", "override_window", 1,
     {"order": "A-10244", "amount": "40.00", "currency": "EUR"},
     {"summary": "Late delivery: the agent issues a goodwill voucher unless someone stops it",
      "metrics": [{"metric": "delivery_delay_days", "value": 6, "operator": ">", "threshold": 3}]}, "0.88"),
    ("disable-partner", "account-disable-agent", "disable_account", "gate", 1,
     {"account": "acct_partner_031", "reason": "chargebacks"},
     {"summary": "Chargeback rate of a partner account above threshold",
      "metrics": [{"metric": "chargeback_rate", "value": 0.041, "operator": ">", "threshold": 0.02, "window": "7d"}]},
     "0.72"),
]

# name, workflow, action, mode, quorum, parameters, evidence, confidence, [(who, verdict, justification, reason)]
DECIDED = [
    ("refund-approved", "refund-agent", "refund_customer", "gate", 1, {"order": "A-10190", "amount": "89.00"},
     {"metrics": [{"metric": "refund_amount_eur", "value": 89, "operator": ">", "threshold": 50}]}, "0.95",
     [("alice", "approve", "", "")]),
    ("flag-rejected", "account-disable-agent", "flag_account", "gate", 1, {"account": "acct_55102"},
     {"summary": "Sign-up burst from one network",
      "metrics": [{"metric": "signups_per_hour", "value": 240, "operator": ">", "threshold": 100}]}, "0.64",
     [("bob", "reject", "The burst is the partner campaign that started at 09:00, not abuse.", "")]),
    ("voucher-overridden", "refund-agent", "issue_voucher", "override_window", 1,
     {"order": "A-10201", "amount": "25.00"},
     {"metrics": [{"metric": "delivery_delay_days", "value": 4, "operator": ">", "threshold": 3}]}, "0.58",
     [("alice", "override", "The parcel was delivered yesterday; the tracking feed lags.", "noise")]),
    ("disable-two-approvals", "account-disable-agent", "disable_account", "gate", 2, {"account": "acct_66019"},
     {"summary": "Credential-stuffing source confirmed by the SOC",
      "metrics": [{"metric": "failed_logins_per_min", "value": 1800, "operator": ">", "threshold": 200}]}, "0.99",
     [("alice", "approve", "", ""), ("bob", "approve", "", "")]),
]


@dataclass
class DemoResult:
    created: list[str] = field(default_factory=list)


def _current_round(agent: ServiceAccount) -> int:
    keys = ApprovalRequest.objects.filter(requested_by_service=agent, idempotency_key__startswith="demo-queue-r")
    rounds = [int(m.group(1)) for key in keys.values_list("idempotency_key", flat=True)
              if (m := KEY_PATTERN.match(key))]
    return max(rounds, default=0)


def _round_still_open(agent: ServiceAccount, number: int) -> bool:
    return ApprovalRequest.objects.pending().filter(
        requested_by_service=agent, idempotency_key__startswith=KEY.format(round=number, name="")).exists()


def _ask(agent, workflows, number, name, slug, action, mode, quorum, parameters, evidence, confidence):
    return services.create_request(
        workflow=workflows[slug], kind="agent_action", action=action, parameters=parameters, evidence=evidence,
        requester=agent, mode=mode, quorum=quorum, confidence=confidence,
        idempotency_key=KEY.format(round=number, name=name))


@transaction.atomic
def seed() -> DemoResult:
    result = DemoResult()
    agent = ServiceAccount.objects.filter(name="demo-agent").first()
    people = {u.username: u for u in User.objects.filter(username__in=["ada", "alice", "bob", "sam"])}
    workflows = {w.slug: w for w in Workflow.objects.filter(slug__in=["refund-agent", "account-disable-agent"])}
    if agent is None or len(people) < 4 or len(workflows) < 2:
        return result  # the governance part of the demo is not there

    number = _current_round(agent)
    if number and _round_still_open(agent, number):
        return result
    number += 1

    for name, slug, action, mode, quorum, parameters, evidence, confidence, decisions in DECIDED:
        req = _ask(agent, workflows, number, name, slug, action, mode, quorum, parameters, evidence, confidence)
        for who, verdict, justification, reason in decisions:
            services.record_decision(req.pk, actor=people[who], verdict=verdict, justification=justification,
                                     reason=reason)
        result.created.append(f"decided request #{req.pk} {action}")
    cancelled = _ask(agent, workflows, number, "refund-cancelled", "refund-agent", "refund_customer", "gate", 1,
                     {"order": "A-10212", "amount": "310.00"}, {"summary": "Refund for a disputed order"}, "0.70")
    services.cancel_request(cancelled.pk, actor=agent, reason="The customer withdrew the dispute.")
    result.created.append(f"cancelled request #{cancelled.pk}")

    pending = {spec[0]: _ask(agent, workflows, number, *spec) for spec in PENDING}
    services.escalate_request(pending["disable-partner"].pk, actor=people["bob"],
                              reason="A partner account: disabling it needs a senior approver's sign-off.")
    result.created += [f"pending request #{req.pk} {req.action}" for req in pending.values()]
    return result

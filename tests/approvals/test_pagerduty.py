"""Paging through PagerDuty's Events API v2, against a local server that checks the documented
payload: a request pages when it reaches its last escalation level and resolves when it is decided
or expires; a failed rollback pages and a later successful one resolves; PagerDuty being down is
retried from the outbox and holds up nothing else; the routing key never reaches the database."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit

import pytest
import time_machine
from django.conf import settings as django_settings
from django.db.models import Q

from approvals import notifications, routing, services
from approvals.models import ApprovalRequest, Delivery, Notice
from audit.models import AuditEvent
from governance import services as governance_services
from governance.permissions import Role
from rollouts import containment, executors, plans
from tests import factories
from tests.approvals.pagerduty_server import ROUTING_KEY, PagerDuty
from tests.rollouts.conftest import DUTIES, plan_spec
from tests.rollouts.receiver import running_receiver

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)


@pytest.fixture
def frozen():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def pagerduty(settings, monkeypatch):
    server = PagerDuty()
    settings.PAGERDUTY_EVENTS_URL = server.url
    settings.APPROVALS_WEBHOOK_URL = ""
    monkeypatch.setenv("PD_PAYMENTS", ROUTING_KEY)
    yield server
    server.close()


@pytest.fixture
def paging(workflow, admin_user, pagerduty):
    """refund-agent pages PD_PAYMENTS at a request's last level and when a rollback fails."""
    routing.set_routes(workflow.pk, actor=admin_user, routes=[
        {"events": ["requested", "decided"], "emails": ["payments-approvals@example.com"]},
        {"events": ["last_level", "rollback_failed"], "pagerduty_routing_key_env": "PD_PAYMENTS"},
    ])
    return pagerduty


def deliver_pending() -> None:
    """What the workers do after commit (and the sweep after a failure)."""
    for notice in Notice.objects.filter(delivered_at__isnull=True):
        try:
            notifications.deliver(notice.pk)
        except notifications.DeliveryFailed:
            pass


def escalate_to_last_level(frozen, req: ApprovalRequest) -> None:
    frozen.shift(dt.timedelta(minutes=10))  # the approvers' ten minutes run out
    services.handle_all_due()
    assert ApprovalRequest.objects.get(pk=req.pk).level == 1  # the senior approvers': the last level


def test_a_request_pages_at_its_last_level_and_resolves_when_decided(make_request, approver, senior_approver,
                                                                    paging, frozen, mailoutbox):
    req = make_request()
    deliver_pending()
    assert paging.events == []  # a new request is no page
    escalate_to_last_level(frozen, req)
    deliver_pending()

    [trigger] = paging.events
    key = f"ringfence-request-{req.pk}"
    assert (trigger["routing_key"], trigger["event_action"], trigger["dedup_key"]) == (ROUTING_KEY, "trigger", key)
    payload = trigger["payload"]
    assert payload["summary"].startswith("refund_customer on refund-agent waits at its last escalation level")
    assert (payload["severity"], payload["component"], payload["group"], payload["class"]) == (
        "error", "refund-agent", "approval", "escalated")
    assert payload["source"] == urlsplit(django_settings.SITE_URL).netloc
    assert payload["timestamp"].startswith("2026-03-02T10:10:00")
    details = payload["custom_details"]
    assert (details["request"], details["level"], details["action"]) == (req.pk, 2, "refund_customer")
    assert "refund_amount 120 > 50" in details["evidence"][0]
    assert trigger["links"] == [{"href": f"{django_settings.SITE_URL}/approvals/{req.pk}/",
                                 "text": f"Approval request #{req.pk}"}]
    assert paging.incidents == {key: "triggered"} and paging.refused == []

    services.record_decision(req.pk, actor=senior_approver, verdict="approve")
    deliver_pending()
    assert paging.actions() == [("trigger", key), ("resolve", key)]
    assert paging.events[1] == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": key}
    assert paging.incidents == {key: "resolved"}
    # The requested and decided notices went to the routed inbox; the page to PagerDuty alone.
    assert [m.to for m in mailoutbox] == [["payments-approvals@example.com"]] * 2


def test_an_expired_request_resolves_its_incident(make_request, approver, senior_approver, paging, frozen):
    req = make_request()
    escalate_to_last_level(frozen, req)
    deliver_pending()
    frozen.shift(dt.timedelta(minutes=20))  # nobody answers at the last level either
    services.handle_all_due()
    assert ApprovalRequest.objects.get(pk=req.pk).state == "expired"
    deliver_pending()
    key = f"ringfence-request-{req.pk}"
    assert paging.actions() == [("trigger", key), ("resolve", key)] and paging.incidents == {key: "resolved"}


def test_a_request_decided_before_its_page_went_out_is_never_paged(make_request, approver, senior_approver, paging,
                                                                   frozen):
    req = make_request()
    escalate_to_last_level(frozen, req)
    services.record_decision(req.pk, actor=senior_approver, verdict="approve")  # before the worker ran
    deliver_pending()
    assert paging.events == []
    escalated = Notice.objects.get(request=req, event="escalated")
    assert not escalated.deliveries.exists()  # moot: nothing was sent, nothing to resolve


def test_without_a_pagerduty_route_nobody_is_paged(make_request, approver, pagerduty, frozen):
    req = make_request()
    escalate_to_last_level(frozen, req)
    deliver_pending()
    assert pagerduty.events == [] and not Delivery.objects.filter(channel="pagerduty").exists()


def test_pagerduty_down_is_retried_from_the_outbox_and_holds_up_nothing_else(
        make_request, approver, senior_approver, paging, frozen, mailoutbox, other_workflow):
    req = make_request()
    deliver_pending()
    paging.down = True
    escalate_to_last_level(frozen, req)
    escalated = Notice.objects.get(request=req, event="escalated")
    with pytest.raises(notifications.DeliveryFailed):
        notifications.deliver(escalated.pk)
    page = Delivery.objects.get(notice=escalated, channel="pagerduty")
    assert (page.recipient, page.status, page.attempts) == ("PD_PAYMENTS", "failed", 1)
    assert "503" in page.last_error

    # Nothing waits on it: the other notices go out, people keep deciding.
    other = make_request(idempotency_key="other")
    deliver_pending()
    assert Notice.objects.get(request=other, event="requested").delivered_at is not None
    assert [m.to for m in mailoutbox] == [["payments-approvals@example.com"]] * 2  # both requests'

    assert notifications.stale_notice_ids() == []  # not before RETRY_AFTER
    frozen.shift(notifications.RETRY_AFTER + dt.timedelta(seconds=1))
    assert escalated.pk in notifications.stale_notice_ids()  # the sweep republishes it
    paging.down = False
    notifications.deliver(escalated.pk)
    key = f"ringfence-request-{req.pk}"
    assert paging.actions() == [("trigger", key)]
    assert Delivery.objects.get(pk=page.pk).status == "sent"
    services.record_decision(req.pk, actor=senior_approver, verdict="approve")
    deliver_pending()
    assert paging.actions() == [("trigger", key), ("resolve", key)]


def test_a_routing_key_variable_that_is_not_set_is_named_on_the_delivery(make_request, approver, paging, frozen,
                                                                        monkeypatch):
    monkeypatch.delenv("PD_PAYMENTS")
    req = make_request()
    escalate_to_last_level(frozen, req)
    deliver_pending()
    page = Delivery.objects.get(channel="pagerduty")
    assert page.status == "failed" and "PD_PAYMENTS" in page.last_error and "not set" in page.last_error
    assert paging.events == []


def test_the_routing_key_never_reaches_the_database(make_request, approver, senior_approver, paging, frozen):
    req = make_request()
    escalate_to_last_level(frozen, req)
    deliver_pending()
    services.record_decision(req.pk, actor=senior_approver, verdict="reject", justification="not this time")
    deliver_pending()
    key = f"ringfence-request-{req.pk}"
    assert paging.actions() == [("trigger", key), ("resolve", key)]
    assert Delivery.objects.filter(channel="pagerduty").values_list("recipient", flat=True).distinct().get() == (
        "PD_PAYMENTS")
    assert not Delivery.objects.filter(Q(recipient__contains=ROUTING_KEY) | Q(last_error__contains=ROUTING_KEY))
    assert not AuditEvent.objects.filter(data__icontains=ROUTING_KEY).exists()


# -- rollbacks -----------------------------------------------------------------------------------

@pytest.fixture
def owner(workflow, containment_owner, admin_user):
    """Olivia owns every containment duty of refund-agent."""
    for duty in DUTIES:
        governance_services.assign_containment(workflow.pk, actor=admin_user, user=containment_owner, duty=duty)
    return containment_owner


@pytest.fixture
def deploy_hook():
    with running_receiver() as receiver:
        yield receiver


@pytest.fixture
def webhook_plan(workflow, owner, deploy_hook):
    """A live rollout of refund-agent whose rollbacks are carried out by a deploy system's webhook."""
    manager = factories.make_user("rita", role=Role.RELEASE_MANAGER)
    factories.scope(manager, workflow)
    plan = plans.create_plan(actor=manager, workflow=workflow,
                             **plan_spec(executor="webhook", webhook_url=deploy_hook.url))
    return plans.start_rollout(plan.pk, actor=manager)


def rollback_notice(event: str) -> Notice:
    return Notice.objects.get(event=event)


def test_a_failed_rollback_pages_and_a_later_successful_one_resolves(webhook_plan, owner, deploy_hook, paging,
                                                                     mailoutbox):
    deploy_hook.secret = "a-secret-the-deploy-system-does-not-share-" + "x" * 10  # it refuses: 401
    failed = executors.run(containment.roll_back(webhook_plan.pk, actor=owner, reason="p95 doubled").pk)
    assert failed.action.state == "failed"
    deliver_pending()
    key = f"ringfence-rollback-{webhook_plan.pk}"
    [trigger] = paging.events
    assert (trigger["event_action"], trigger["dedup_key"]) == ("trigger", key)
    payload = trigger["payload"]
    assert payload["summary"] == "refund-agent: rollback of prompt-v2 failed"
    assert (payload["severity"], payload["group"], payload["class"], payload["component"]) == (
        "critical", "rollout", "rollback_failed", "refund-agent")
    assert payload["custom_details"]["action"] == failed.action.pk and "401" in payload["custom_details"]["error"]
    assert trigger["links"][0]["href"].endswith(webhook_plan.get_absolute_url())
    assert mailoutbox == []  # routed: the failure goes to PagerDuty only

    deploy_hook.secret = django_settings.ROLLOUT_WEBHOOK_SECRET  # fixed; the owner asks again
    done = executors.run(containment.roll_back(webhook_plan.pk, actor=owner, reason="p95 doubled, again").pk)
    assert done.action.state == "succeeded"
    deliver_pending()
    assert paging.actions() == [("trigger", key), ("resolve", key)] and paging.incidents == {key: "resolved"}
    assert rollback_notice("rollback_executed").data["action"] == done.action.pk


def test_without_routes_a_failed_rollback_is_told_to_the_rollback_owner(webhook_plan, owner, deploy_hook, pagerduty,
                                                                        mailoutbox):
    deploy_hook.secret = "a-secret-the-deploy-system-does-not-share-" + "x" * 10
    executors.run(containment.roll_back(webhook_plan.pk, actor=owner, reason="p95 doubled").pk)
    deliver_pending()
    [mail] = mailoutbox
    assert mail.to == ["olivia@example.com"]
    assert mail.subject == "[Ringfence] refund-agent: rollback of prompt-v2 failed"
    assert "still serves" in mail.body and pagerduty.events == []

    deploy_hook.secret = django_settings.ROLLOUT_WEBHOOK_SECRET
    executors.run(containment.roll_back(webhook_plan.pk, actor=owner, reason="again").pk)
    deliver_pending()
    assert [m.subject for m in mailoutbox][1] == "[Ringfence] refund-agent: prompt-v2 rolled back to prompt-v1"


def test_a_rollback_that_succeeds_first_time_adds_no_notice_without_routes(webhook_plan, owner, pagerduty):
    executors.run(containment.roll_back(webhook_plan.pk, actor=owner, reason="p95 doubled").pk)
    assert not Notice.objects.filter(event__in=["rollback_executed", "rollback_failed"]).exists()

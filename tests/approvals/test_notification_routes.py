"""Notification routes per workflow: each event goes only where the workflow routes it; a workflow
without routes keeps the installation's email and webhook; routes come from ringfence.yaml, are
applied through an audited service, shown on the workflow's page and exported back."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.test import Client

from approvals import notifications, routing, services
from approvals.models import ApprovalRequest, Delivery, Notice, NotificationRoute
from audit import log as audit
from audit.models import AuditEvent
from configuration import exporting, loading, planning
from core.errors import TransitionRefused
from tests.approvals.pagerduty_server import Webhook
from tests.support.config_files import run, write

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)
SECRET = "route-webhook-secret-for-tests-" + "r" * 20


@pytest.fixture
def frozen():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def hooks(settings):
    endpoint = Webhook()
    settings.APPROVALS_WEBHOOK_SECRET = SECRET
    settings.APPROVALS_WEBHOOK_URL = endpoint.url("/global")
    yield endpoint
    endpoint.close()


def deliver_all(req: ApprovalRequest) -> None:
    """What the worker does after commit; a failing channel (Slack with no token here) is recorded
    on its delivery row and does not stop the others."""
    for notice in Notice.objects.filter(request=req, delivered_at__isnull=True):
        try:
            notifications.deliver(notice.pk)
        except notifications.DeliveryFailed:
            pass


def sent_to(req: ApprovalRequest, event: str) -> set[tuple[str, str]]:
    return set(Delivery.objects.filter(notice__request=req, notice__event=event)
               .values_list("channel", "recipient"))


def route(workflow, admin_user, *routes: dict) -> None:
    routing.set_routes(workflow.pk, actor=admin_user, routes=list(routes))


def test_a_workflow_without_routes_keeps_the_installation_email_and_webhook(make_request, approver, hooks,
                                                                           other_workflow, admin_user, mailoutbox):
    route(other_workflow, admin_user, {"emails": ["elsewhere@example.com"], "slack_channel": "#elsewhere"})
    req = make_request()
    deliver_all(req)
    assert [m.to for m in mailoutbox] == [["alice@example.com"]]
    assert hooks.events("/global") == ["approval_requested"]
    assert sent_to(req, "requested") == {("email", "alice@example.com"), ("webhook", hooks.url("/global"))}


def test_each_event_goes_only_where_the_workflow_routes_it(make_request, approver, senior_approver, workflow,
                                                          admin_user, hooks, mailoutbox, frozen):
    route(workflow, admin_user,
          {"events": ["requested"], "emails": ["payments-approvals@example.com"],
           "slack_channel": "#payments-approvals"},
          {"events": ["escalated", "decided"], "webhook_url": hooks.url("/payments")})
    req = make_request()
    deliver_all(req)
    assert sent_to(req, "requested") == {("email", "payments-approvals@example.com"),
                                         ("slack", "#payments-approvals")}
    assert [m.to for m in mailoutbox] == [["payments-approvals@example.com"]]  # not the approvers' own inboxes
    assert hooks.received == []  # neither the routed webhook nor the installation's

    frozen.shift(dt.timedelta(minutes=10))
    services.handle_all_due()
    deliver_all(req)
    services.record_decision(req.pk, actor=senior_approver, verdict="approve")
    deliver_all(req)
    assert sent_to(req, "escalated") == {("webhook", hooks.url("/payments"))}
    assert sent_to(req, "decided") == {("webhook", hooks.url("/payments"))}
    assert hooks.events("/payments") == ["approval_escalated", "approval_decided"]
    assert hooks.events("/global") == []
    assert len(mailoutbox) == 1
    signed = hooks.received[0]["headers"]
    assert signed["X-Ringfence-Event"] == "approval.escalated" and signed["X-Ringfence-Signature"].startswith("v1=")


def test_a_route_without_events_takes_every_event_and_last_level_names_the_last_escalation(
        make_request, approver, workflow, admin_user, hooks, frozen):
    route(workflow, admin_user, {"webhook_url": hooks.url("/all")},
          {"events": ["last_level"], "webhook_url": hooks.url("/last")})
    window = make_request(mode="override_window", kind="rollback", action="roll_back", idempotency_key="w")
    req = make_request()
    deliver_all(window)
    deliver_all(req)
    frozen.shift(dt.timedelta(minutes=10))
    services.handle_all_due()  # the window proceeds; the gate escalates to its last level
    deliver_all(window)
    deliver_all(req)
    assert hooks.events("/all") == ["approval_window_opened", "approval_requested", "approval_decided",
                                    "approval_escalated"]
    assert hooks.events("/last") == ["approval_escalated"]


def test_a_slack_route_hands_the_notice_to_slack_and_its_failure_is_retried_alone(
        make_request, approver, workflow, admin_user, hooks, mailoutbox):
    route(workflow, admin_user, {"slack_channel": "C0PAYMENTS1", "emails": ["payments@example.com"]})
    req = make_request()
    notice = Notice.objects.get(request=req)
    try:
        notifications.deliver(notice.pk)
    except notifications.DeliveryFailed:
        pass
    rows = {d.channel: d for d in Delivery.objects.filter(notice=notice)}
    assert set(rows) == {"email", "slack"} and rows["slack"].recipient == "C0PAYMENTS1"
    assert rows["email"].status == "sent" and [m.to for m in mailoutbox] == [["payments@example.com"]]


def test_routes_are_checked_and_only_administrators_set_them(workflow, admin_user, approver):
    head = AuditEvent.objects.count()
    refusals = [
        (admin_user, {"slack_channel": "payments"}, "Slack channel"),
        (admin_user, {"events": ["lunch"], "emails": ["a@example.com"]}, "unknown event 'lunch'"),
        (admin_user, {"emails": ["not-an-address"]}, "not an email address"),
        (admin_user, {"webhook_url": "ftp://example.com/x"}, "http(s)"),
        (admin_user, {"webhook_url": "http://169.254.169.254/latest/meta-data"}, "link-local address"),
        (admin_user, {"pagerduty_routing_key_env": "R0123456789abcdef0123456789abcde"}, "environment variable"),
        (admin_user, {"events": ["requested"]}, "goes nowhere"),
        (approver, {"emails": ["a@example.com"]}, "Only administrators"),
    ]
    for actor, spec, words in refusals:
        with pytest.raises(TransitionRefused) as refused:
            routing.set_routes(workflow.pk, actor=actor, routes=[spec])
        assert words in refused.value.message
    assert not NotificationRoute.objects.exists() and AuditEvent.objects.count() == head


def test_setting_routes_is_audited_once_per_change(workflow, admin_user):
    spec = {"events": ["requested", "escalated"], "slack_channel": "#payments-approvals",
            "pagerduty_routing_key_env": "PD_PAYMENTS"}
    route(workflow, admin_user, spec)
    route(workflow, admin_user, spec)  # the same routes again: nothing to record
    route(workflow, admin_user)
    changes = list(AuditEvent.objects.filter(action="notification.routes_changed").order_by("seq"))
    assert len(changes) == 2
    assert changes[0].workflow_slug == "refund-agent" and changes[0].actor_label == "ada"
    assert changes[0].data["before"] == [] and changes[0].data["after"] == [{
        "events": ["escalated", "requested"], "emails": [], "slack_channel": "#payments-approvals",
        "webhook_url": "", "pagerduty_routing_key_env": "PD_PAYMENTS"}]
    assert changes[1].data["after"] == [] and not NotificationRoute.objects.exists()
    assert audit.verify_database().ok


def test_the_workflow_page_shows_its_routes_read_only(workflow, admin_user, approver):
    route(workflow, admin_user, {"events": ["last_level", "rollback_failed"],
                                 "pagerduty_routing_key_env": "PD_PAYMENTS"},
          {"slack_channel": "#payments-approvals", "webhook_url": "https://hooks.example.com/T000/B000/secret"})
    client = Client()
    client.force_login(approver)
    page = client.get(f"/workflows/{workflow.slug}/").content.decode()
    assert "Where notices go" in page and "#payments-approvals" in page and "PD_PAYMENTS" in page
    assert "hooks.example.com" in page and "secret" not in page.split("Where notices go")[1].split("</section>")[0]
    assert "edit them in ringfence.yaml" in page.lower() and "<form" not in page.split("Where notices go")[1].split(
        "</section>")[0]


# -- ringfence.yaml ----------------------------------------------------------------------------

FILE = """\
version: 1
workflows:
  - slug: refund-agent
    name: Refund Agent
    tier: 2
    business_hours: {timezone: UTC, days: [0, 1, 2, 3, 4], start: "09:00", end: "17:00"}
    notify:
      - events: [requested, escalated]
        slack: "#payments-approvals"
        email: [payments-oncall@example.com]
      - events: [last_level, rollback_failed]
        pagerduty: {routing_key_env: PD_PAYMENTS}
      - webhook: https://hooks.example.com/ringfence
"""


def test_routes_in_the_file_are_planned_applied_audited_and_exported(tmp_path, workflow, admin_user):
    path = write(tmp_path, FILE)
    code, out, _ = run("plan", path)
    assert code == 2 and "+ routes/refund-agent" in out
    assert not NotificationRoute.objects.exists()  # a plan changes nothing

    code, out, err = run("apply", path, "--as", "ada")
    assert code == 0, err
    routes = list(NotificationRoute.objects.filter(workflow=workflow))
    assert [(r.events, r.emails, r.slack_channel, r.webhook_url, r.pagerduty_routing_key_env) for r in routes] == [
        (["escalated", "requested"], ["payments-oncall@example.com"], "#payments-approvals", "", ""),
        (["last_level", "rollback_failed"], [], "", "", "PD_PAYMENTS"),
        ([], [], "", "https://hooks.example.com/ringfence", ""),
    ]
    changed = AuditEvent.objects.get(action="notification.routes_changed")
    assert changed.actor_label == "ada" and len(changed.data["after"]) == 3
    assert "routes/refund-agent" in AuditEvent.objects.get(action="config.applied").data["changes"]
    assert run("plan", path)[0] == 0

    exported = exporting.export_yaml()
    doc, _ = loading.load_text(exported)
    [wf] = [w for w in doc.workflows if w.slug == "refund-agent"]
    assert [r.model_dump(exclude_defaults=True) for r in wf.notify] == [
        {"events": ["escalated", "requested"], "email": ["payments-oncall@example.com"],
         "slack": "#payments-approvals"},
        {"events": ["last_level", "rollback_failed"], "pagerduty": {"routing_key_env": "PD_PAYMENTS"}},
        {"webhook": "https://hooks.example.com/ringfence"},
    ]
    assert planning.plan(doc).empty  # the export round trips

    moved = write(tmp_path, FILE.replace('"#payments-approvals"', '"#payments-oncall"'), "moved.yaml")
    code, out, _ = run("plan", moved)
    assert code == 2 and "~ routes/refund-agent  (routes:" in out
    run("apply", moved, "--as", "ada")
    assert NotificationRoute.objects.get(position=0).slack_channel == "#payments-oncall"

    without = write(tmp_path, FILE.split("    notify:\n")[0], "without.yaml")
    assert run("plan", without)[0] == 0  # no `notify:`: the routes are left alone
    code, out, _ = run("plan", without, "--prune")
    assert code == 2 and "- routes/refund-agent" in out
    run("apply", without, "--prune", "--as", "ada")
    assert not NotificationRoute.objects.exists()
    assert AuditEvent.objects.filter(action="notification.routes_changed").count() == 3
    assert audit.verify_database().ok


@pytest.mark.parametrize(("old", "new", "field", "words"), [
    ('slack: "#payments-approvals"', "slack: payments", "workflows[0].notify[0]", "Slack channel"),
    ("routing_key_env: PD_PAYMENTS", "routing_key_env: R0123456789abcdef", "workflows[0].notify[1].pagerduty",
     "String should match pattern"),
    ("events: [requested, escalated]", "events: [requested, lunch]", "workflows[0].notify[0].events[1]",
     "must be one of"),
    ("      - webhook: https://hooks.example.com/ringfence\n", "      - events: [decided]\n",
     "workflows[0].notify[2]", "goes nowhere"),
])
def test_a_wrong_route_is_refused_naming_its_line_and_nothing_changes(tmp_path, workflow, admin_user, old, new,
                                                                      field, words):
    assert old in FILE
    path = write(tmp_path, FILE.replace(old, new))
    code, _, err = run("apply", path, "--as", "ada")
    assert code == 1
    first = err.splitlines()[0]
    assert first.startswith(f"{path}:") and f": {field}" in first and words in first, first
    assert not NotificationRoute.objects.exists()
    assert not AuditEvent.objects.filter(action__in=["notification.routes_changed", "config.applied"]).exists()

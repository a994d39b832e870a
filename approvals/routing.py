"""Notification routes: where a workflow's notices go (email addresses, a Slack channel, a webhook,
PagerDuty) and for which of its events. Declared in ringfence.yaml (`notify:`) and written by
`set_routes`; read by the outbox (approvals.notifications.targets).

The events a route can name are the notices' events, plus `last_level`:

    requested, window_opened, escalated, reminder, decided       an approval request's
    autonomous_action (a review is due), signals_lost,
    rollback_executed, rollback_failed                           a rollout's
    last_level        a request escalated to its last level, or reminded there as its deadline nears

A route without events takes every event. A workflow without routes keeps the installation's
APPROVALS_EMAIL and APPROVALS_WEBHOOK_URL.
"""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_email
from django.db import transaction

from approvals.models import EscalationLevel, Notice, NotificationRoute
from audit import log as audit
from core import outbound
from core.errors import require
from governance.models import Workflow
from governance.services import is_administrator

AUDIT_ACTIONS = ("notification.routes_changed",)
EVENTS = NotificationRoute.EVENTS
LAST_LEVEL = "last_level"
MAX_ROUTES = 20
FIELDS = ("events", "emails", "slack_channel", "webhook_url", "pagerduty_routing_key_env")
# A channel's name (#payments-approvals) or its id (C0123456789).
SLACK_CHANNEL = re.compile(r"^(#[a-z0-9][a-z0-9._-]{0,79}|[CGD][A-Z0-9]{6,20})$")
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,99}$")


def routes_of(workflow_id: int) -> list[NotificationRoute]:
    return list(NotificationRoute.objects.filter(workflow_id=workflow_id).order_by("position"))


def at_last_level(notice: Notice) -> bool:
    """An approval notice that escalated its request to the policy's last level, or reminds there."""
    if notice.request_id is None or notice.event not in (Notice.Event.ESCALATED, Notice.Event.REMINDER):
        return False
    policy_id = notice.request.policy_id
    return not EscalationLevel.objects.filter(policy_id=policy_id, position__gt=notice.level).exists()


def event_names(notice: Notice) -> set[str]:
    """The names a route's `events` can match the notice by."""
    return {notice.event, LAST_LEVEL} if at_last_level(notice) else {notice.event}


def describe(route: dict) -> dict:
    """A route in the canonical form routes are compared, audited and exported in."""
    return {name: route.get(name) or ([] if name in ("events", "emails") else "") for name in FIELDS}


def clean(route: dict, index: int) -> dict:
    """A route's fields checked (TransitionRefused naming the field) and in canonical form."""
    at = f"routes[{index}]"
    unknown = set(route) - set(FIELDS)
    require(not unknown, "invalid", f"Route {index + 1}: unknown field(s) {', '.join(sorted(unknown))}.", field=at)
    route = describe(route)
    events, emails = sorted(set(route["events"])), sorted({address.strip() for address in route["emails"]})
    for name in events:
        require(name in EVENTS, "invalid", f"Route {index + 1}: unknown event {name!r}; one of {', '.join(EVENTS)}.",
                field=f"{at}.events")
    for address in emails:
        try:
            validate_email(address)
        except ValidationError:
            require(False, "invalid", f"Route {index + 1}: {address!r} is not an email address.", field=f"{at}.emails")
    channel = route["slack_channel"].strip()
    require(not channel or SLACK_CHANNEL.fullmatch(channel), "invalid",
            f"Route {index + 1}: name the Slack channel as #name or by its id (C0123…).", field=f"{at}.slack_channel")
    url = route["webhook_url"].strip()
    if url:
        try:
            URLValidator(schemes=["http", "https"])(url)
        except ValidationError:
            require(False, "invalid", f"Route {index + 1}: the webhook needs an http(s) address.",
                    field=f"{at}.webhook_url")
        problem = outbound.target_problem(url)
        require(problem is None, "invalid", f"Route {index + 1}: {problem}.", field=f"{at}.webhook_url")
    env = route["pagerduty_routing_key_env"].strip()
    require(not env or ENV_NAME.fullmatch(env), "invalid",
            f"Route {index + 1}: PagerDuty's routing key is named by its environment variable (PD_PAYMENTS), "
            "never written here.", field=f"{at}.pagerduty_routing_key_env")
    require(emails or channel or url or env, "invalid",
            f"Route {index + 1}: it goes nowhere; name email, slack, webhook or pagerduty.", field=at)
    return {"events": events, "emails": emails, "slack_channel": channel, "webhook_url": url,
            "pagerduty_routing_key_env": env}


@transaction.atomic
def set_routes(workflow_id: int, *, actor: Any, routes: list[dict]) -> list[NotificationRoute]:
    """Replace a workflow's notification routes (an empty list: back to the installation's
    settings). Administrators only; every route is checked before anything changes; nothing is
    written when the routes are already these. Audit: `notification.routes_changed` with the routes
    before and after (PagerDuty keys are named by their environment variable, never stored)."""
    require(is_administrator(actor), "forbidden", "Only administrators change where notices go.")
    require(len(routes) <= MAX_ROUTES, "invalid", f"A workflow has at most {MAX_ROUTES} routes.", field="routes")
    wanted = [clean(route, i) for i, route in enumerate(routes)]
    try:
        workflow = Workflow.objects.select_for_update().get(pk=workflow_id)
    except Workflow.DoesNotExist:
        require(False, "not_found", "This workflow does not exist.")
    before = [describe({name: getattr(r, name) for name in FIELDS}) for r in routes_of(workflow.pk)]
    if before == wanted:
        return routes_of(workflow.pk)
    NotificationRoute.objects.filter(workflow=workflow).delete()
    created = NotificationRoute.objects.bulk_create(
        NotificationRoute(workflow=workflow, position=i, **fields) for i, fields in enumerate(wanted))
    audit.record(actor, "notification.routes_changed", workflow, data={"before": before, "after": wanted})
    return created

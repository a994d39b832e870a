"""Paging through PagerDuty's Events API v2: one incident per request that reached its last
escalation level, and per plan whose rollback failed.

    POST {PAGERDUTY_EVENTS_URL}            (https://events.pagerduty.com/v2/enqueue)
    {"routing_key": "<the value of the route's environment variable>",
     "event_action": "trigger",            trigger | resolve
     "dedup_key": "ringfence-request-42",  ringfence-request-<id> | ringfence-rollback-<plan id>
     "payload": {"summary", "source", "severity", "timestamp", "component", "group", "class",
                 "custom_details"},        (trigger only)
     "links": [{"href", "text"}], "client": "Ringfence", "client_url"}

A trigger goes out with the notice that escalated a request to its last level (and again, deduplicated
by PagerDuty, with the reminder there), or that a rollback failed, on each route of the workflow
that takes the event and names a routing key. The resolve goes out with the notice that the request
was decided, expired or cancelled, or that a rollback of the plan succeeded, to every routing key the
incident was triggered on, whatever the routes say by then. The delivery's recipient is the name of
the environment variable, so the key itself never reaches the database.
"""

from __future__ import annotations

import json
import os
from urllib.parse import urlsplit

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from approvals import routing
from approvals.models import Delivery, Notice
from approvals.sending import DeliveryFailed
from core import outbound

TRIGGER, RESOLVE = "trigger", "resolve"
MAX_SUMMARY = 1024


def event_action(notice: Notice) -> str | None:
    """trigger, resolve, or None for a notice PagerDuty does not hear about."""
    if notice.request_id is not None:
        if routing.at_last_level(notice):
            return TRIGGER
        return RESOLVE if notice.event == Notice.Event.DECIDED else None
    return {Notice.Event.ROLLBACK_FAILED: TRIGGER, Notice.Event.ROLLBACK_EXECUTED: RESOLVE}.get(notice.event)


def dedup_key(notice: Notice) -> str:
    if notice.request_id is not None:
        return f"ringfence-request-{notice.request_id}"
    return f"ringfence-rollback-{notice.data.get('plan')}"


def _same_incident(notice: Notice) -> Q:
    """The notices that page or resolve the incident `notice` belongs to."""
    if notice.request_id is not None:
        return Q(notice__request_id=notice.request_id)
    return Q(notice__workflow_id=notice.workflow_id, notice__data__plan=notice.data.get("plan"),
             notice__event__in=[Notice.Event.ROLLBACK_FAILED, Notice.Event.ROLLBACK_EXECUTED])


def paged_on(notice: Notice) -> list[str]:
    """The routing keys (their variables' names) the incident of a resolving notice was triggered on."""
    return sorted(set(Delivery.objects.filter(_same_incident(notice), channel=Delivery.Channel.PAGERDUTY)
                      .exclude(notice=notice).values_list("recipient", flat=True)))


def _resolved_since(notice: Notice) -> bool:
    """A rollback failure whose plan has rolled back since: paging for it now would open a stale incident."""
    return (notice.event == Notice.Event.ROLLBACK_FAILED
            and Notice.objects.filter(workflow_id=notice.workflow_id, event=Notice.Event.ROLLBACK_EXECUTED,
                                      data__plan=notice.data.get("plan"), created_at__gte=notice.created_at).exists())


def _severity(notice: Notice) -> str:
    return "critical" if notice.event == Notice.Event.ROLLBACK_FAILED else "error"


def _details(notice: Notice) -> tuple[str, dict, list[dict]]:
    """Summary, custom details and links of a trigger."""
    if notice.request_id is None:
        details = {**notice.data, "workflow": notice.workflow.slug, "detail": notice.body[:4000]}
        links = [{"href": notice.link, "text": f"Rollout of {notice.workflow.slug}"}] if notice.link else []
        return notice.title, details, links
    req = notice.request
    url = f"{settings.SITE_URL}{req.get_absolute_url()}"
    due = timezone.localtime(req.due_at).strftime("%H:%M %Z")
    summary = (f"{req.action} on {req.workflow.slug} waits at its last escalation level "
               f"(level {notice.level + 1}); answer by {due}")
    details = {"request": req.pk, "workflow": req.workflow.slug, "kind": req.kind, "action": req.action,
               "mode": req.mode, "level": notice.level + 1, "due_at": req.due_at.isoformat(),
               "requested_by": req.requester_label, "evidence": req.evidence_lines(), "url": url}
    return summary, details, [{"href": url, "text": f"Approval request #{req.pk}"}]


def event_body(notice: Notice, routing_key: str, action: str) -> dict:
    """The Events API v2 event for a notice."""
    body: dict = {"routing_key": routing_key, "event_action": action, "dedup_key": dedup_key(notice)}
    if action == TRIGGER:
        summary, details, links = _details(notice)
        body["payload"] = {
            "summary": summary[:MAX_SUMMARY],
            "source": urlsplit(settings.SITE_URL).netloc or "ringfence",
            "severity": _severity(notice),
            "timestamp": notice.created_at.isoformat(),
            "component": notice.workflow.slug,
            "group": notice.source,
            "class": notice.event,
            "custom_details": details,
        }
        body.update(links=links, client="Ringfence", client_url=settings.SITE_URL)
    return body


def _post(body: dict) -> None:
    """POST an event through core.outbound (202 is PagerDuty's yes; 400 a malformed event, 429 too
    many: both are failed deliveries the sweep retries)."""
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    headers = {"Content-Type": "application/json", "User-Agent": "Ringfence-Notifier/1"}
    try:
        answer = outbound.post(settings.PAGERDUTY_EVENTS_URL, data, headers,
                               timeout=settings.APPROVALS_WEBHOOK_TIMEOUT_SECONDS, label="PagerDuty target")
    except outbound.Refused as refusal:
        raise DeliveryFailed(str(refusal)) from None
    except OSError as exc:
        raise DeliveryFailed(f"PagerDuty unreachable: {exc}") from None
    if not 200 <= answer.status < 300:
        raise DeliveryFailed(f"PagerDuty answered {answer.status}")


def deliver(notice: Notice, routing_key_env: str) -> bool:
    """Send the notice's event with the routing key held by `routing_key_env`; False when there was
    nothing to send (a rollback failure already rolled back since). Raises DeliveryFailed."""
    action = event_action(notice)
    if action is None or (action == TRIGGER and _resolved_since(notice)):
        return False
    routing_key = os.environ.get(routing_key_env, "").strip()
    if not routing_key:
        raise DeliveryFailed(f"the environment variable {routing_key_env} holding the PagerDuty routing key is not set")
    _post(event_body(notice, routing_key, action))
    return True

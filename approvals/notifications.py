"""Telling people: the one notification outbox of approvals and rollouts, delivered by email and
by a signed, Slack-compatible webhook.

A `Notice` is opened inside the transaction of the change it tells, once per change: an approval's
per (request, event, level) by `open_notice`, rendered at delivery for whoever the request then
waits for; any other (a rollout's) per (subject, event) by `enqueue`, with the title, body, link and
recipients its opener wrote. Delivery happens after commit (`messages.publish_delivery`), one
`Delivery` row per channel and recipient, claimed before sending so duplicate task runs never send
twice. A failed send, or a lost message, is taken up again by the sweep every RETRY_AFTER, at most
MAX_ATTEMPTS times per delivery and never after GIVE_UP_AFTER. An approval notice whose request has
moved on (decided, or escalated past it) is not delivered any more.

Email goes to the notice's people (for approval notices only while APPROVALS_EMAIL is on). The
webhook (APPROVALS_WEBHOOK_URL) gets every notice: a POST of Slack incoming-webhook JSON (`text`,
`blocks`) with the machine-readable event in `metadata`, signed by core.signing:

    X-Ringfence-Timestamp: 1767225600
    X-Ringfence-Signature: v1=<hex hmac_sha256(APPROVALS_WEBHOOK_SECRET, "1767225600." + body)>
    X-Ringfence-Event: approval.requested          (rollout.signals_lost, rollout.autonomous_action, …)
    Idempotency-Key: approval-notice-42            (rollout-notice-43)

Receivers recompute the signature, compare in constant time, and refuse timestamps older than a
few minutes (`core.signing.verify`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage
from django.db import IntegrityError, connection, models, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from approvals import eligibility, messages, pagerduty, routing, slack
from approvals.models import ApprovalRequest, Delivery, EscalationLevel, Notice
from approvals.sending import DeliveryFailed
from audit.log import describe_subject
from core import clock, outbound, signing
from governance.models import Workflow

logger = logging.getLogger(__name__)
Event = Notice.Event
MAX_ATTEMPTS = 5
# A claim older than this belongs to a worker that died mid-send; the delivery is tried again.
STALE_CLAIM = timedelta(minutes=5)
RETRY_AFTER = timedelta(seconds=60)
GIVE_UP_AFTER = timedelta(days=1)


def open_notice(req: ApprovalRequest, event: str) -> Notice:
    """Record, inside a transition, that `req` changed in a way people hear about. A transition
    happens once per (request, event, level), so the notice is new; the unique constraint backs it.
    The caller publishes its delivery after commit."""
    return Notice.objects.create(source=Notice.Source.APPROVAL, request=req, workflow_id=req.workflow_id,
                                 subject_type=req._meta.label_lower, subject_id=str(req.pk), event=event,
                                 level=req.level, created_at=clock.now())


def enqueue(*, source: str, event: str, subject: models.Model | tuple[str, str], workflow: Workflow,
            recipients: Iterable[str], title: str, body: str, link: str = "", data: dict | None = None,
            at_once: bool = False) -> Notice | None:
    """Open a notice that is not an approval's (a rollout's) inside the caller's transaction, to be
    emailed to `recipients` (addresses) and posted to the webhook. After commit its delivery is
    published, or with `at_once` run in this process (for a caller that is itself a worker, so the
    notice does not wait behind the queue); either way a failure is the sweep's to retry.
    Once per (subject, event): None when that change was told already."""
    if not connection.in_atomic_block:
        raise RuntimeError("enqueue() belongs inside the transaction of the change it tells")
    subject_type, subject_id = describe_subject(subject)
    try:
        with transaction.atomic():
            notice = Notice.objects.create(
                source=source, event=event, workflow=workflow, subject_type=subject_type, subject_id=subject_id,
                title=title[:300], body=body, link=link[:500], recipients=sorted(set(recipients)), data=data or {},
                created_at=clock.now())
    except IntegrityError:
        told = Notice.objects.filter(request__isnull=True, subject_type=subject_type, subject_id=subject_id,
                                     event=event)
        if told.exists():
            return None
        raise
    transaction.on_commit(partial(_deliver_here if at_once else messages.publish_delivery, notice.pk))
    return notice


def _deliver_here(notice_id: int) -> None:
    try:
        deliver(notice_id)
    except Exception:  # recorded on the delivery rows; the sweep tries again after RETRY_AFTER
        logger.warning("notice %s not delivered at once", notice_id, exc_info=True)


def open_reminder(req: ApprovalRequest) -> Notice | None:
    """The reminder notice of the request's current level; None when it was already opened."""
    try:
        with transaction.atomic():
            return open_notice(req, Event.REMINDER)
    except IntegrityError:
        return None


def open_due_reminders(limit: int = 200) -> int:
    """Open the reminder notice of each pending request whose reminder time has come (one per level)."""
    now = clock.now()
    reminded = Notice.objects.filter(request=OuterRef("pk"), event=Event.REMINDER, level=OuterRef("level"))
    due = (ApprovalRequest.objects.pending().filter(remind_at__lte=now, due_at__gt=now, held_at__isnull=True)
           .exclude(Exists(reminded)).order_by("remind_at")[:limit])
    opened = 0
    for req in due:
        with transaction.atomic():
            notice = open_reminder(req)
            if notice is not None:
                transaction.on_commit(lambda pk=notice.pk: messages.publish_delivery(pk))
                opened += 1
    return opened


def stale_notice_ids(limit: int = 100) -> list[int]:
    """Notices not delivered yet whose last attempt is a while ago (a lost message or a failure)."""
    now = clock.now()
    return list(
        Notice.objects.filter(delivered_at__isnull=True, created_at__gte=now - GIVE_UP_AFTER,
                              created_at__lte=now - RETRY_AFTER)
        .exclude(attempted_at__gt=now - RETRY_AFTER).order_by("created_at").values_list("pk", flat=True)[:limit]
    )


def waiting_on(req: ApprovalRequest) -> list:
    """The active people named by the request's current level who may decide it (never the requester)."""
    level = EscalationLevel.objects.filter(policy_id=req.policy_id, position=req.level).first()
    if level is None:
        return []
    people = (get_user_model().objects.filter(is_active=True)
              .filter(Q(groups__in=level.groups.all()) | Q(pk__in=level.people.values("pk")))
              .distinct().order_by("username"))
    return [p for p in people if eligibility.in_scope(p, req) and not eligibility.asked_by(p, req)]


def recipients(notice: Notice) -> list:
    """The people an approval notice is for."""
    req = notice.request
    if notice.event == Event.DECIDED:
        ids = {req.requested_by_id, req.on_behalf_of_id} - {None}
        return list(get_user_model().objects.filter(pk__in=ids, is_active=True).order_by("username"))
    return waiting_on(req)


def addresses(notice: Notice) -> list[str]:
    """Where the notice is emailed: its approvers or requester, or the addresses its opener chose."""
    if notice.request_id is None:
        return list(notice.recipients)
    return [p.email for p in recipients(notice) if p.email]


def _local(value: datetime) -> str:
    return timezone.localtime(value).strftime("%H:%M %Z")


def describe(notice: Notice) -> tuple[str, str]:
    """Subject line and plain-text body, shared by the email and the webhook."""
    if notice.request_id is None:
        return notice.title, notice.body
    req = notice.request
    what = f"{req.action} on {req.workflow.slug}"
    subjects = {
        Event.REQUESTED: f"Approval needed: {what} (answer by {_local(req.due_at)})",
        Event.WINDOW_OPENED: f"Override window: {what} proceeds at {_local(req.due_at)} unless overridden",
        Event.ESCALATED: f"Escalated to level {req.level + 1}: {what} (answer by {_local(req.due_at)})",
        Event.REMINDER: f"Reminder: {what} needs an answer by {_local(req.due_at)}",
        Event.DECIDED: f"{req.get_state_display().capitalize()}: {what}",
    }
    lines = [
        f"{req.get_kind_display().capitalize()} #{req.pk} asked by {req.requester_label}.",
        *(f"Evidence: {line}" for line in req.evidence_lines()),
    ]
    if summary := req.evidence.get("summary") if isinstance(req.evidence, dict) else None:
        lines.append(f"Summary: {summary}")
    if req.confidence is not None:
        lines.append(f"Confidence: {req.confidence_percent}")
    if notice.event == Event.DECIDED:
        lines.append(req.closed_summary().replace("Already ", "", 1).capitalize())
    lines.append(f"Open it: {settings.SITE_URL}{req.get_absolute_url()}")
    return subjects[Event(notice.event)], "\n".join(lines)


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_message(subject: str, body: str, link: str, event_type: str, event_payload: dict) -> bytes:
    """A notice as the webhook posts it: Slack's `text` and `blocks`, and the event in `metadata`."""
    payload = {
        "text": f"{_slack_escape(subject)}{link}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{_slack_escape(subject)}*"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _slack_escape(body)}},
        ],
        "metadata": {"event_type": event_type, "event_payload": event_payload},
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")


def webhook_body(notice: Notice) -> bytes:
    subject, body = describe(notice)
    if notice.request_id is None:  # a rollout's notice, told in its own words
        return _slack_message(
            subject, body, f" <{notice.link}|{notice.workflow.slug}>" if notice.link else "",
            f"{notice.source}_{notice.event}",
            {**notice.data, "notice": notice.pk, "workflow": notice.workflow.slug,
             "subject": {"type": notice.subject_type, "id": notice.subject_id}, "url": notice.link})
    req = notice.request
    url = f"{settings.SITE_URL}{req.get_absolute_url()}"
    return _slack_message(
        subject, body, f" <{url}|#{req.pk}>", f"approval_{notice.event}",
        {"notice": notice.pk, "request": req.pk, "workflow": req.workflow.slug, "kind": req.kind,
         "action": req.action, "mode": req.mode, "state": req.state, "level": req.level,
         "due_at": req.due_at.isoformat(), "url": url})


def _post_webhook(notice: Notice, url: str) -> None:
    """POST the notice through core.outbound: a target it refuses (loopback, private, … outside
    WEBHOOK_ALLOWED_NETWORKS) or a redirect is a failed delivery; the answer's body is never read."""
    body = webhook_body(notice)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Ringfence-Notifier/1",
        **signing.sign(settings.APPROVALS_WEBHOOK_SECRET, body),
        "X-Ringfence-Event": f"{notice.source}.{notice.event}",
        "Idempotency-Key": f"{notice.source}-notice-{notice.pk}",
    }
    try:
        answer = outbound.post(url, body, headers, timeout=settings.APPROVALS_WEBHOOK_TIMEOUT_SECONDS)
    except outbound.Refused as refusal:
        raise DeliveryFailed(str(refusal)) from None
    except OSError as exc:
        raise DeliveryFailed(f"webhook unreachable: {exc}") from None
    if 300 <= answer.status < 400:
        raise DeliveryFailed(f"webhook answered {answer.status}: redirects are not followed")
    if not 200 <= answer.status < 300:
        raise DeliveryFailed(f"webhook answered {answer.status}")


def _send_email(notice: Notice, address: str) -> None:
    subject, body = describe(notice)
    EmailMessage(f"[Ringfence] {subject}", body, settings.DEFAULT_FROM_EMAIL, [address]).send()


def _claim(delivery: Delivery, now: datetime) -> bool:
    """Take a delivery for sending; False when it was sent, is being sent, or ran out of attempts."""
    claimable = Q(status__in=[Delivery.Status.PENDING, Delivery.Status.FAILED]) | Q(
        status=Delivery.Status.SENDING, claimed_at__lt=now - STALE_CLAIM)
    return bool(Delivery.objects.filter(claimable, pk=delivery.pk, attempts__lt=MAX_ATTEMPTS)
                .update(status=Delivery.Status.SENDING, claimed_at=now, attempts=F("attempts") + 1))


def targets(notice: Notice) -> list[tuple[str, str]]:
    """(channel, recipient) for each send: the routes of the notice's workflow that take its event,
    else the installation's settings; and PagerDuty's resolve wherever the incident was triggered."""
    routes = routing.routes_of(notice.workflow_id)
    if not routes:
        found = []
        if settings.APPROVALS_EMAIL or notice.request_id is None:
            found += [(Delivery.Channel.EMAIL, address) for address in addresses(notice)]
        if settings.APPROVALS_WEBHOOK_URL:
            found.append((Delivery.Channel.WEBHOOK, settings.APPROVALS_WEBHOOK_URL))
    else:
        found = _routed(notice, routes)
    if pagerduty.event_action(notice) == pagerduty.RESOLVE:
        found += [(Delivery.Channel.PAGERDUTY, env) for env in pagerduty.paged_on(notice)]
    return list(dict.fromkeys(found))


def _routed(notice: Notice, routes: list) -> list[tuple[str, str]]:
    names = routing.event_names(notice)
    pages = pagerduty.event_action(notice) == pagerduty.TRIGGER
    found: list[tuple[str, str]] = []
    for route in routes:
        if not route.matches(names):
            continue
        found += [(Delivery.Channel.EMAIL, address) for address in route.emails]
        if route.slack_channel:
            found.append((Delivery.Channel.SLACK, route.slack_channel))
        if route.webhook_url:
            found.append((Delivery.Channel.WEBHOOK, route.webhook_url))
        if route.pagerduty_routing_key_env and pages:
            found.append((Delivery.Channel.PAGERDUTY, route.pagerduty_routing_key_env))
    return found


def _send(notice: Notice, channel: str, recipient: str) -> bool:
    """One send on one channel; False when the channel found nothing to send. Raises on failure."""
    if channel == Delivery.Channel.WEBHOOK:
        if len(settings.APPROVALS_WEBHOOK_SECRET) < 32:
            raise DeliveryFailed("APPROVALS_WEBHOOK_SECRET (at least 32 characters) is needed to sign webhooks")
        _post_webhook(notice, recipient)
    elif channel == Delivery.Channel.SLACK:
        slack.deliver(notice, recipient)
    elif channel == Delivery.Channel.PAGERDUTY:
        return pagerduty.deliver(notice, recipient)
    else:
        _send_email(notice, recipient)
    return True


def is_moot(notice: Notice) -> bool:
    """An approval notice about a request that has moved on since (decided, or escalated past it)."""
    req = notice.request
    if req is None:
        return False
    return notice.event != Event.DECIDED and (not req.is_pending or req.level != notice.level)


def deliver(notice_id: int) -> dict:
    """Send a notice on every channel, each recipient at most once; raise if any send failed."""
    notice = Notice.objects.select_related("request__workflow", "workflow").filter(pk=notice_id).first()
    if notice is None or notice.delivered_at is not None:
        return {}
    now = clock.now()
    Notice.objects.filter(pk=notice.pk).update(attempted_at=now)
    counts = {"sent": 0, "failed": 0, "skipped": 0}
    if not is_moot(notice):
        for channel, recipient in targets(notice):
            delivery, _ = Delivery.objects.get_or_create(notice=notice, channel=channel, recipient=recipient)
            if not _claim(delivery, now):
                continue
            try:
                sent = _send(notice, channel, recipient)
            except Exception as exc:  # noqa: BLE001 - recorded on the row and retried by the sweep
                Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.FAILED,
                                                               last_error=str(exc)[:2000])
                logger.warning("notice %s via %s to %s failed: %s", notice.pk, channel, recipient, exc)
                counts["failed"] += 1
                continue
            if not sent:
                Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.SKIPPED, last_error="")
                counts["skipped"] += 1
                continue
            Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.SENT, sent_at=clock.now(),
                                                           last_error="")
            counts["sent"] += 1
    else:
        counts["skipped"] = 1
    # Done once nothing is left to try: every delivery sent, or out of attempts (given up). A send
    # another run claimed a moment ago is that run's to finish, even if it fails.
    unfinished = notice.deliveries.filter(
        Q(status__in=[Delivery.Status.FAILED, Delivery.Status.PENDING], attempts__lt=MAX_ATTEMPTS)
        | Q(status=Delivery.Status.SENDING, claimed_at__gte=now - STALE_CLAIM)).exists()
    if not unfinished:
        finished = Notice.objects.filter(pk=notice.pk, delivered_at__isnull=True).update(delivered_at=clock.now())
        if finished and notice.deliveries.filter(status=Delivery.Status.FAILED).exists():
            logger.error("notice %s given up: a delivery failed %s times", notice.pk, MAX_ATTEMPTS)
    if counts["failed"]:
        raise DeliveryFailed(f"{counts['failed']} delivery attempt(s) of notice {notice.pk} failed")
    return counts

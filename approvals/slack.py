"""Slack: a request posted to its workflow's channel as a Block Kit message with Approve / Reject /
Override buttons, kept up to date in place by the request's later notices; and who a Slack user is
in Ringfence.

Off until SLACK_BOT_TOKEN is set. The outbox (approvals.notifications) calls `deliver(notice, channel)`
for each route that names a Slack channel. The first notice of a request in a channel posts the
message (chat.postMessage) and keeps its `ts` (SlackMessage); every later notice (escalated, reminder,
decided anywhere, expired) re-renders the request as it is now and replaces the message
(chat.update), so the buttons disappear once nothing can be decided. A failure raises DeliveryFailed
and the outbox retries it; other channels and other notices are not held up.

The buttons and the modals come back to `POST /integrations/slack/interactions`
(approvals.slack_views, approvals.slack_interactions). A Slack user acts as the Ringfence user an
administrator linked to them (SlackLink, `manage.py slack_link`), else as the one person whose email
the identity provider verified (governance.IdentityLink) when Slack reports that email as confirmed
for them (users.info).

Audit actions (never renamed or reused):
    slack.user_linked     link_user
    slack.user_unlinked   unlink_user
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.signature import Clock, SignatureVerifier

from approvals.models import ActionRule, ApprovalRequest, Decision, Notice, SlackLink, SlackMessage
from approvals.sending import DeliveryFailed
from approvals.templatetags.evidence import readable_evidence
from audit import log as audit
from core import clock
from core.errors import TransitionRefused, require
from governance.models import IdentityLink
from governance.services import is_administrator

AUDIT_ACTIONS = ("slack.user_linked", "slack.user_unlinked")
# A notice's send may take this long; an interaction must be answered within Slack's 3 seconds.
DELIVERY_TIMEOUT_SECONDS = 10
INTERACTIVE_TIMEOUT_SECONDS = 2
ACTION_PREFIX = "ringfence_"
OPEN_ACTION = "ringfence_open"
MODAL_CALLBACK = "ringfence_decision"
BUTTONS = {"approve": ("Approve", "primary"), "reject": ("Reject", "danger"), "override": ("Override", "danger")}
PAST = {"approve": "approved", "reject": "rejected", "override": "overrode"}
ASK_WHY = {"reject": "Why reject it? Required.", "override": "Why stop it? Required."}
# Slack's limits: a section's text is at most 3,000 characters, a plain-text input 3,000.
SECTION_LIMIT = 2900
JUSTIFICATION_LIMIT = 3000
PARAMETER_LINES = 10
EVIDENCE_LINES = 12
SLACK_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,31}$")
SLACK_TEAM_ID = re.compile(r"^(|[TE][A-Z0-9]{2,31})$")


def enabled() -> bool:
    return bool(settings.SLACK_BOT_TOKEN)


def client(timeout: float = DELIVERY_TIMEOUT_SECONDS) -> WebClient:
    """The Web API client. No retries of its own: the outbox retries a failed notice a minute later."""
    return WebClient(token=settings.SLACK_BOT_TOKEN, base_url=settings.SLACK_API_URL, timeout=timeout,
                     retry_handlers=[])


# --- requests as Slack shows them ----------------------------------------------------------------

def escape(text: object) -> str:
    """Text from an agent or a person, safe in mrkdwn: no links, mentions or @channel of its own."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int = SECTION_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _link(url: str, label: str) -> str:
    url = url.replace("<", "%3C").replace(">", "%3E").replace("|", "%7C").replace(" ", "%20")
    return f"<{url}|{escape(label).replace('|', '¦')}>"


def _date(at: datetime, token: str) -> str:
    """A time every reader sees in their own time zone (`<!date^…>`), with our local time as fallback."""
    return f"<!date^{int(at.timestamp())}^{token}|{timezone.localtime(at).strftime('%Y-%m-%d %H:%M %Z')}>"


def _hhmm(at: datetime) -> str:
    return timezone.localtime(at).strftime("%H:%M")


def _name(user: AbstractBaseUser) -> str:
    return user.get_short_name() or user.get_username()


def _section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _cut(text)}}


def _context(text: str) -> dict:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": _cut(text)}]}


def rule_text(rule: dict) -> str:
    """The rule a request keeps, as approvals.explain.rule_line words it (that module sits above the
    outbox, which imports this one, so the line is built here from the same ActionRule.summary)."""
    kept = ActionRule(condition=rule.get("condition", ""), outcome=rule.get("outcome", ""),
                      reason=rule.get("reason") or "", quorum=rule.get("quorum"),
                      approver_roles=rule.get("approver_roles") or [], position=rule.get("position") or 0,
                      shadow=bool(rule.get("shadow")))
    return f"Rule {kept.number}: {kept.summary()}"


def _parameters(parameters: dict) -> str:
    items = list(parameters.items()) if isinstance(parameters, dict) else []
    lines = [f"`{escape(key)}` = {escape(_cut(json.dumps(value, ensure_ascii=False), 200))}"
             for key, value in items[:PARAMETER_LINES]]
    if len(items) > PARAMETER_LINES:
        lines.append(f"… and {len(items) - PARAMETER_LINES} more on the request's page")
    return "\n".join(lines)


def _evidence(req: ApprovalRequest) -> str:
    """The evidence as the request page reads it (approvals/templatetags/evidence.py), in short."""
    ev = readable_evidence(req.evidence)
    lines = [escape(text) for text in (ev.summary, ev.decision) if text]
    lines += [f"• `{escape(line)}`" for line in ev.lines]
    lines += [f"• context tag {escape(tag)}" for tag in ev.tags]
    lines += [f"• {escape(key)}: {escape(_cut(str(value), 200))}" for key, value in ev.other]
    if len(lines) > EVIDENCE_LINES:
        lines = [*lines[:EVIDENCE_LINES], f"… and {len(lines) - EVIDENCE_LINES} more on the request's page"]
    if req.confidence is not None:
        lines.append(f"Confidence {req.confidence_percent}")
    if ev.links:
        lines.append(" · ".join(_link(link["url"], link["label"]) for link in ev.links[:5]))
    return "\n".join(lines)


def _decisions(req: ApprovalRequest) -> tuple[list[str], Decision | None]:
    decisions = list(req.decisions.select_related("decided_by", "slack").order_by("decided_at", "pk"))
    lines = []
    for d in decisions:
        line = f"{escape(_name(d.decided_by))} {PAST[d.verdict]} at {_hhmm(d.decided_at)} — {_where(d)}"
        if d.justification:
            line += f": {escape(_cut(d.justification, 300))}"
        lines.append(line)
    return lines, (decisions[-1] if decisions else None)


def _where(decision: Decision) -> str:
    return "in Slack" if hasattr(decision, "slack") else "on the web"


def _status(req: ApprovalRequest, last: Decision | None) -> str:
    """One line on where the request stands: its deadline, its hold, or how it ended and where."""
    if not req.is_pending:
        outcome = req.outcome_summary().removesuffix(".")
        if req.state in (req.State.APPROVED, req.State.REJECTED, req.State.OVERRIDDEN) and last is not None:
            outcome += f" — {_where(last)}"
        return f"*{escape(outcome)}*"
    if req.is_held:
        return f"*On hold:* {escape(req.hold_summary())}. Nothing can be decided until it is resumed."
    due = f"{_date(req.due_at, '{date_short_pretty} at {time}')} ({_date(req.due_at, '{ago}')})"
    if req.is_override_window:
        line = f"Proceeds {due} unless someone overrides it"
    else:
        line = f"Answer by {due}; then it {req.at_deadline}"
    if req.is_escalated:
        line = f"Escalated to level {req.level + 1}. {line}"
    return f":stopwatch: {line}"


def render(req: ApprovalRequest) -> tuple[str, list[dict]]:
    """The request as its Slack message shows it now: the fallback text and the blocks."""
    url = f"{settings.SITE_URL}{req.get_absolute_url()}"
    if req.is_pending:
        headline = "Override window" if req.is_override_window else "Approval needed"
    else:
        headline = req.get_state_display().capitalize()
    what = f"{req.action} on {req.workflow.slug}"
    decided, last = _decisions(req)
    asked = (f"{req.get_kind_display().capitalize()} #{req.pk}, asked by {escape(req.requester_label)} · "
             f"needs {escape(req.quorum_summary())}")
    blocks = [_section(f"*{headline}:* `{escape(req.action)}` on *{escape(req.workflow.slug)}*\n{asked}")]
    if params := _parameters(req.parameters):
        blocks.append(_section(f"*What is asked*\n{params}"))
    if req.rule:
        blocks.append(_section(f"*The rule that asked*\n`{escape(rule_text(req.rule))}`"))
    if evidence := _evidence(req):
        blocks.append(_section(f"*Evidence*\n{evidence}"))
    blocks.append(_section(_status(req, last)))
    if decided:
        blocks.append(_context("\n".join(decided)))
    buttons = []
    if req.is_pending and not req.is_held:
        for verdict in req.allowed_verdicts():
            label, style = BUTTONS[verdict]
            buttons.append({"type": "button", "action_id": f"{ACTION_PREFIX}{verdict}", "style": style,
                            "text": {"type": "plain_text", "text": label}, "value": str(req.pk)})
    buttons.append({"type": "button", "action_id": OPEN_ACTION, "url": url,
                    "text": {"type": "plain_text", "text": "Open in Ringfence"}})
    blocks.append({"type": "actions", "block_id": f"request-{req.pk}", "elements": buttons})
    text = f"{headline}: {what} (#{req.pk})"
    if not req.is_pending:
        text += f". {req.outcome_summary()}"
    return text, blocks


def _notice_message(notice: Notice) -> tuple[str, list[dict]]:
    """A notice that is not an approval's (a rollout's), in its opener's words."""
    blocks = [_section(f"*{escape(notice.title)}*")]
    if notice.body:
        blocks.append(_section(escape(notice.body)))
    if notice.link:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "action_id": OPEN_ACTION, "url": notice.link,
             "text": {"type": "plain_text", "text": "Open in Ringfence"}}]})
    return notice.title, blocks


# --- the outbox's channel ------------------------------------------------------------------------

def deliver(notice: Notice, channel: str) -> None:
    """Tell `channel` about the notice: post the request's message there, or update it in place.
    Raises DeliveryFailed (the outbox retries) when Slack is off, unreachable or refuses."""
    if not enabled():
        raise DeliveryFailed("SLACK_BOT_TOKEN is not set, so Slack is off")
    try:
        if notice.request_id is None:
            text, blocks = _notice_message(notice)
            client().chat_postMessage(channel=channel, text=text, blocks=blocks, unfurl_links=False)
        else:
            _post_or_update(notice.request_id, channel)
    except (SlackClientError, OSError) as exc:
        raise _failed(exc) from None


def refresh(request_id: int) -> None:
    """Re-render the request's messages in every channel now. Raises DeliveryFailed like `deliver`."""
    for channel in SlackMessage.objects.filter(request_id=request_id).exclude(ts="").values_list("channel", flat=True):
        try:
            _post_or_update(request_id, channel, interactive=True)
        except (SlackClientError, OSError) as exc:
            raise _failed(exc) from None


def _error_of(exc: SlackApiError) -> str:
    data = exc.response.data
    return str(data.get("error", "")) if isinstance(data, dict) else ""


def _failed(exc: Exception) -> DeliveryFailed:
    if isinstance(exc, SlackApiError):
        return DeliveryFailed(f"Slack answered {exc.response.status_code}: {_error_of(exc) or 'no error given'}")
    return DeliveryFailed(f"Slack unreachable: {exc}")


def _post_or_update(request_id: int, channel: str, *, interactive: bool = False) -> None:
    """The request's message in `channel`, rendered as the request is now. The message row is locked
    while Slack answers, so two notices of one request never post twice or update out of order."""
    with transaction.atomic():
        message, _ = SlackMessage.objects.select_for_update().get_or_create(
            request_id=request_id, channel=channel, defaults={"posted_at": clock.now()})
        req = ApprovalRequest.objects.select_related("workflow", "policy").get(pk=request_id)
        text, blocks = render(req)
        web = client(INTERACTIVE_TIMEOUT_SECONDS if interactive else DELIVERY_TIMEOUT_SECONDS)
        if message.ts:
            try:
                web.chat_update(channel=message.channel_id, ts=message.ts, text=text, blocks=blocks)
            except SlackApiError as exc:
                if _error_of(exc) != "message_not_found":
                    raise
            else:
                message.updated_at = clock.now()
                message.save(update_fields=["updated_at"])
                return
        # New here, or someone deleted the message in Slack: post it (again).
        answer = web.chat_postMessage(channel=channel, text=text, blocks=blocks, unfurl_links=False)
        message.channel_id, message.ts = str(answer["channel"]), str(answer["ts"])
        message.posted_at, message.updated_at = clock.now(), None
        message.save(update_fields=["channel_id", "ts", "posted_at", "updated_at"])


# --- requests from Slack: signatures, people, answers --------------------------------------------

class _ServiceClock(Clock):
    def now(self) -> float:
        return clock.now().timestamp()


def signature_ok(body: bytes, headers: Any) -> bool:
    """Whether Slack signed this raw body (`X-Slack-Signature: v0=<hex HMAC-SHA256 of
    "v0:<X-Slack-Request-Timestamp>:<body>">` under SLACK_SIGNING_SECRET) within the last 5 minutes.
    Run before anything of the body is read."""
    secret = settings.SLACK_SIGNING_SECRET
    stamp = headers.get("X-Slack-Request-Timestamp") or ""
    given = headers.get("X-Slack-Signature") or ""
    if not secret or not given or not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        return False
    try:
        return SignatureVerifier(secret, clock=_ServiceClock()).is_valid(body=body, timestamp=stamp, signature=given)
    except UnicodeDecodeError:
        return False


def person(team_id: str, slack_user_id: str) -> tuple[AbstractBaseUser | None, str]:
    """The active Ringfence user a Slack user acts as, and how we know it: an administrator's link
    ("link"), else the email Slack has confirmed for them being the one the identity provider verified
    for exactly one person ("email"); (None, "") when neither holds. Raises on a Slack error."""
    link = (SlackLink.objects.select_related("user").filter(slack_user_id=slack_user_id, team_id__in=[team_id, ""])
            .order_by("-team_id").first())
    if link is not None:
        return (link.user, "link") if link.user.is_active else (None, "")
    if not enabled():
        return None, ""
    answer = client(INTERACTIVE_TIMEOUT_SECONDS).users_info(user=slack_user_id)
    member = answer.get("user") or {}
    email = str((member.get("profile") or {}).get("email") or "")
    if not email or member.get("is_email_confirmed") is not True or member.get("deleted"):
        return None, ""
    verified = list(IdentityLink.objects.select_related("user")
                    .filter(email_verified=True, email__iexact=email, user__is_active=True)[:2])
    return (verified[0].user, "email") if len(verified) == 1 else (None, "")


def tell(channel_id: str, slack_user_id: str, text: str) -> None:
    """An answer only that user sees, in the channel of the message they pressed a button on."""
    client(INTERACTIVE_TIMEOUT_SECONDS).chat_postEphemeral(channel=channel_id, user=slack_user_id, text=text)


def modal(req: ApprovalRequest, verdict: str, channel_id: str) -> dict:
    """The modal that asks why (and, to override, the reason category) before the verdict is recorded."""
    label = BUTTONS[verdict][0]
    blocks = [
        _section(f"*{label}* `{escape(req.action)}` on *{escape(req.workflow.slug)}* (#{req.pk})"),
        {"type": "input", "block_id": "justification", "label": {"type": "plain_text", "text": "Justification"},
         "element": {"type": "plain_text_input", "action_id": "justification", "multiline": True,
                     "max_length": JUSTIFICATION_LIMIT,
                     "placeholder": {"type": "plain_text", "text": ASK_WHY[verdict]}}},
    ]
    if verdict == Decision.Verdict.OVERRIDE:
        blocks.append({
            "type": "input", "block_id": "reason", "label": {"type": "plain_text", "text": "Reason"},
            "element": {"type": "static_select", "action_id": "reason",
                        "placeholder": {"type": "plain_text", "text": "Choose why you override"},
                        "options": [{"text": {"type": "plain_text", "text": str(text).capitalize()}, "value": value}
                                    for value, text in Decision.Reason.choices]}})
    return {
        "type": "modal", "callback_id": MODAL_CALLBACK,
        "private_metadata": json.dumps({"request": req.pk, "verdict": verdict, "channel": channel_id}),
        "title": {"type": "plain_text", "text": f"{label} request #{req.pk}"[:24]},
        "submit": {"type": "plain_text", "text": label},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": blocks,
    }


def open_modal(trigger_id: str, view: dict) -> None:
    client(INTERACTIVE_TIMEOUT_SECONDS).views_open(trigger_id=trigger_id, view=view)


def refusal_view(title: str, text: str) -> dict:
    """A modal that only says why nothing was changed."""
    return {"type": "modal", "title": {"type": "plain_text", "text": title[:24]},
            "close": {"type": "plain_text", "text": "Close"}, "blocks": [_section(escape(text))]}


# --- linking Slack users to people ---------------------------------------------------------------

@transaction.atomic
def link_user(*, actor: AbstractBaseUser, user: AbstractBaseUser, slack_user_id: str,
              team_id: str = "") -> SlackLink:
    """Let the Slack user `slack_user_id` (of workspace `team_id`, or any) act as `user` from Slack.
    Administrators only; a Slack user acts as one person. Audit: `slack.user_linked`."""
    require(is_administrator(actor), "forbidden", "Only an administrator links Slack users to people.")
    slack_user_id, team_id = (slack_user_id or "").strip().upper(), (team_id or "").strip().upper()
    require(SLACK_USER_ID.fullmatch(slack_user_id), "invalid", "A Slack user id looks like U0123ABCD (the member "
            "ID in the person's Slack profile).", field="slack_user_id")
    require(SLACK_TEAM_ID.fullmatch(team_id), "invalid", "A Slack workspace id looks like T0123ABCD.",
            field="team_id")
    require(user.is_active, "invalid", f"{user.get_username()} is not active.", field="user")
    existing = SlackLink.objects.select_for_update().filter(team_id=team_id, slack_user_id=slack_user_id).first()
    if existing is not None:
        require(existing.user_id == user.pk, "conflict",
                f"{slack_user_id} already acts as {existing.user.get_username()}; unlink it first.")
        return existing
    try:
        with transaction.atomic():
            link = SlackLink.objects.create(team_id=team_id, slack_user_id=slack_user_id, user=user,
                                            linked_at=clock.now())
    except IntegrityError:
        raise TransitionRefused("conflict", f"{slack_user_id} was linked meanwhile; look again.") from None
    audit.record(actor, "slack.user_linked", link, data={"user": user.get_username(), "user_id": user.pk,
                                                         "slack_user_id": slack_user_id, "team_id": team_id})
    return link


@transaction.atomic
def unlink_user(*, actor: AbstractBaseUser, slack_user_id: str, team_id: str = "") -> None:
    """The Slack user no longer acts as anyone. Administrators only. Audit: `slack.user_unlinked`."""
    require(is_administrator(actor), "forbidden", "Only an administrator unlinks Slack users.")
    slack_user_id, team_id = (slack_user_id or "").strip().upper(), (team_id or "").strip().upper()
    link = (SlackLink.objects.select_for_update().select_related("user")
            .filter(team_id=team_id, slack_user_id=slack_user_id).first())
    require(link is not None, "not_found", f"{slack_user_id} is not linked.")
    audit.record(actor, "slack.user_unlinked", link, data={"user": link.user.get_username(), "user_id": link.user_id,
                                                           "slack_user_id": slack_user_id, "team_id": team_id})
    link.delete()

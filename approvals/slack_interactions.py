"""What a Slack user's button or modal does, once approvals.slack_views has checked Slack's signature.

Approve decides at once; Reject and Override open a modal that asks for the justification (and, to
override, the reason category), and its submission decides. Either way the verdict goes through
services.record_decision, the page's own service, which applies every rule (scope, level,
four-eyes, quorum, justification, a paused workflow's hold); a refusal changes nothing and is
answered to that user alone, in the service's words.

Audit actions (never renamed or reused):
    slack.decided   decide (after record_decision's own events: which Slack user gave the verdict)
"""

from __future__ import annotations

import json
import logging

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from slack_sdk.errors import SlackClientError

from approvals import eligibility, services, slack
from approvals.models import ApprovalRequest, Decision, SlackDecision
from approvals.sending import DeliveryFailed
from audit import log as audit
from core.denials import security_log
from core.errors import TransitionRefused

logger = logging.getLogger(__name__)
AUDIT_ACTIONS = ("slack.decided",)
NOT_LINKED = ("Your Slack account is not linked to a Ringfence user, so nothing was changed. Ask an administrator "
              "to link it (`manage.py slack_link`), or decide on the request's page.")
FIELDS = ("justification", "reason")
# Refusals that mean the message no longer says how things stand: it is re-rendered at once.
STALE = ("not_pending", "paused")


@transaction.atomic
def decide(request_id: int, *, actor: AbstractBaseUser, verdict: str, justification: str = "", reason: str = "",
           slack_user_id: str, team_id: str, matched_by: str) -> ApprovalRequest:
    """Record a verdict given in Slack by `actor` (the person the Slack user acts as), through
    services.record_decision, and that it was given in Slack. A refusal raises TransitionRefused and
    changes nothing. Audit: record_decision's events, then `slack.decided`."""
    req = services.record_decision(request_id, actor=actor, verdict=verdict, justification=justification,
                                   reason=reason)
    decision = Decision.objects.get(request_id=req.pk, decided_by=actor)
    SlackDecision.objects.create(decision=decision, team_id=team_id, slack_user_id=slack_user_id)
    audit.record(actor, "slack.decided", req, data={
        "decision": decision.pk, "verdict": verdict, "slack_user_id": slack_user_id, "team_id": team_id,
        "matched_by": matched_by})
    return req


def handle(payload: dict) -> dict | None:
    """Answer one interaction payload: the JSON body Slack expects back, or None for an empty 200."""
    kind = payload.get("type")
    if kind == "block_actions":
        _button(payload)
    elif kind == "view_submission" and (payload.get("view") or {}).get("callback_id") == slack.MODAL_CALLBACK:
        return _submission(payload)
    return None


def _ids(payload: dict) -> tuple[str, str]:
    user = payload.get("user") or {}
    team = (payload.get("team") or {}).get("id") or user.get("team_id") or ""
    return str(user.get("id") or ""), str(team)


def _number(value: object) -> int | None:
    text = str(value or "")
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


def _acting(team_id: str, slack_user_id: str) -> tuple[AbstractBaseUser | None, str]:
    try:
        return slack.person(team_id, slack_user_id)
    except (SlackClientError, OSError) as exc:  # users.info failed: nobody is matched this time
        logger.warning("Slack users.info for %s failed: %s", slack_user_id, exc)
        return None, ""


def _tell(channel_id: str, slack_user_id: str, text: str) -> None:
    if not channel_id:
        return
    try:
        slack.tell(channel_id, slack_user_id, text)
    except (SlackClientError, OSError) as exc:
        logger.warning("could not answer %s in Slack: %s", slack_user_id, exc)


def _refused(refusal: TransitionRefused, slack_user_id: str, actor: AbstractBaseUser, request_id: int) -> None:
    if refusal.status == 403:
        security_log.info("refused %s slack_user=%s user=%s approval=%s via Slack", refusal.code, slack_user_id,
                          actor.pk, request_id)


def _button(payload: dict) -> None:
    ours = {f"{slack.ACTION_PREFIX}{verdict}": verdict for verdict in slack.BUTTONS}
    action = next((a for a in payload.get("actions") or [] if isinstance(a, dict) and a.get("action_id") in ours),
                  None)
    if action is None:  # the link button, or something not ours
        return
    verdict = ours[action["action_id"]]
    request_id = _number(action.get("value"))
    slack_user_id, team_id = _ids(payload)
    channel_id = str((payload.get("channel") or {}).get("id") or (payload.get("container") or {}).get("channel_id")
                     or "")
    if request_id is None or not slack_user_id:
        return
    actor, matched_by = _acting(team_id, slack_user_id)
    if actor is None:
        _tell(channel_id, slack_user_id, NOT_LINKED)
        return
    if verdict == Decision.Verdict.APPROVE:
        try:
            req = decide(request_id, actor=actor, verdict=verdict, slack_user_id=slack_user_id, team_id=team_id,
                         matched_by=matched_by)
        except TransitionRefused as refusal:
            _answer_refusal(refusal, channel_id, slack_user_id, actor, request_id)
            return
        if req.is_pending:  # the quorum is not reached yet: the message stays as it is
            approvals = req.decisions.filter(verdict=Decision.Verdict.APPROVE).count()
            _tell(channel_id, slack_user_id, f"Your approval of #{req.pk} is recorded: {approvals} of "
                                             f"{req.quorum_summary()} so far.")
        return
    # Reject or override: ask why in a modal, unless the answer would be refused anyway.
    refusal = _cannot_decide(actor, request_id, verdict)
    if refusal is not None:
        _answer_refusal(refusal, channel_id, slack_user_id, actor, request_id)
        return
    req = ApprovalRequest.objects.select_related("workflow").get(pk=request_id)
    try:
        slack.open_modal(str(payload.get("trigger_id") or ""), slack.modal(req, verdict, channel_id))
    except (SlackClientError, OSError) as exc:
        logger.warning("could not open the %s modal of request %s: %s", verdict, request_id, exc)
        _tell(channel_id, slack_user_id, "Slack did not open the form in time; press the button again.")


def _cannot_decide(actor: AbstractBaseUser, request_id: int, verdict: str) -> TransitionRefused | None:
    """Why the service would refuse this person's verdict now, in its words, or None: checked before
    the modal opens, in record_decision's order (the service checks again when it is submitted)."""
    req = (ApprovalRequest.objects.select_related("workflow", "policy", "requested_by_service")
           .filter(pk=request_id).first())
    if req is None:
        return TransitionRefused("not_found", "This approval request does not exist.")
    if (refusal := eligibility.scope_refusal(actor, req)) is not None:
        return refusal
    if not req.is_pending:
        return TransitionRefused("not_pending", req.closed_summary())
    if req.is_held:
        return TransitionRefused("paused", f"On hold: {req.hold_summary()}. Nothing can be decided until it is "
                                           "resumed.")
    if (refusal := eligibility.decider_refusal(actor, req)) is not None:
        return refusal
    if verdict not in req.allowed_verdicts():
        return TransitionRefused("invalid", f"This {req.get_mode_display()} can be answered with "
                                            f"{' or '.join(req.allowed_verdicts())}.")
    if req.decisions.filter(decided_by=actor).exists():
        return TransitionRefused("already_decided", "You already decided this request.")
    return None


def _answer_refusal(refusal: TransitionRefused, channel_id: str, slack_user_id: str, actor: AbstractBaseUser,
                    request_id: int) -> None:
    """Tell the user why nothing changed; a message that no longer says how things stand (the request
    was decided, or its workflow paused, since) is re-rendered too."""
    _refused(refusal, slack_user_id, actor, request_id)
    _tell(channel_id, slack_user_id, refusal.message)
    if refusal.code in STALE:
        _refresh(request_id)


def _refresh(request_id: int) -> None:
    try:
        slack.refresh(request_id)
    except DeliveryFailed as exc:
        logger.warning("could not refresh the Slack messages of request %s: %s", request_id, exc)


def _submission(payload: dict) -> dict | None:
    view = payload.get("view") or {}
    try:
        meta = json.loads(view.get("private_metadata") or "{}")
    except json.JSONDecodeError:
        meta = {}
    request_id, verdict = _number(meta.get("request")), str(meta.get("verdict") or "")
    if request_id is None or verdict not in slack.BUTTONS:
        return None
    values = (view.get("state") or {}).get("values") or {}
    justification = str(((values.get("justification") or {}).get("justification") or {}).get("value") or "")
    reason = str((((values.get("reason") or {}).get("reason") or {}).get("selected_option") or {}).get("value") or "")
    slack_user_id, team_id = _ids(payload)
    actor, matched_by = _acting(team_id, slack_user_id)
    if actor is None:
        return {"response_action": "update", "view": slack.refusal_view("Not linked", NOT_LINKED)}
    try:
        decide(request_id, actor=actor, verdict=verdict, justification=justification, reason=reason,
               slack_user_id=slack_user_id, team_id=team_id, matched_by=matched_by)
    except TransitionRefused as refusal:
        _refused(refusal, slack_user_id, actor, request_id)
        if refusal.field in FIELDS and refusal.field in values:
            return {"response_action": "errors", "errors": {refusal.field: refusal.message}}
        if refusal.code in STALE:
            _refresh(request_id)
        return {"response_action": "update", "view": slack.refusal_view("Nothing changed", refusal.message)}
    return None

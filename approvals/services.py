"""Approval transitions: one function each. Lock the row, check, change, audit (last), on_commit.

Audit actions (never renamed or reused):
    approval.requested      create_request
    approval.decided        record_decision (every verdict)
    approval.approved       record_decision when the quorum is reached
    approval.rejected       record_decision on a reject
    approval.overridden     record_decision on an override
    approval.escalated      escalate_request (timer or a person asking for the next level)
    approval.expired        handle_due / handle_all_due (last level ran out, terminal action reject)
    approval.auto_approved  handle_due / handle_all_due (override window ran out, terminal action proceed)
    approval.cancelled      cancel_request
    approval.policy_defined define_policy
    approval.held           hold_requests (the workflow was paused: no decision, no timer)
    approval.released       release_requests (resumed: the remaining time is given back)
    action.rules_set        set_action_rules (a governed action's live or shadow rule list)

Executions (claims, outcomes, unclaimed approvals expiring) are in approvals.executions.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, Group
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from approvals import eligibility, executions, messages, notifications, rules, waiting
from approvals.models import (
    MAX_JUSTIFICATION,
    ActionRule,
    ApprovalRequest,
    Decision,
    EscalationLevel,
    EscalationPolicy,
    Mode,
    Notice,
    RuleOutcome,
)
from approvals.policies import policy_for
from audit import log as audit
from core import clock
from core.errors import TransitionRefused, require
from governance.models import GovernedAction, ServiceAccount, Workflow
from governance.permissions import VIEW, perm
from governance.services import is_administrator

logger = logging.getLogger(__name__)
State = ApprovalRequest.State
# Every audit action this module writes (the module docstring says which function writes which).
AUDIT_ACTIONS = (
    "approval.requested", "approval.decided", "approval.approved", "approval.rejected", "approval.overridden",
    "approval.escalated", "approval.expired", "approval.auto_approved", "approval.cancelled",
    "approval.policy_defined", "approval.held", "approval.released", "action.rules_set",
)
Verdict = Decision.Verdict
TIMER_ACTOR = "system:timer"
MAX_ACTION = 100
MAX_KEY = 255


def _lock(request_id: int) -> ApprovalRequest:
    req = (ApprovalRequest.objects.select_for_update(of=("self",))
           .select_related("workflow", "policy", "requested_by_service").filter(pk=request_id).first())
    require(req is not None, "not_found", "This approval request does not exist.")
    return req


def _label(actor: Any) -> str:
    if isinstance(actor, AbstractBaseUser):
        return actor.get_short_name() or actor.get_username()
    return audit.describe_actor(actor)[2]


def _reminder_time(due_at: datetime, timeout_seconds: int) -> datetime | None:
    """Remind the approvers a little before the deadline: a quarter of the level's time, at most
    APPROVALS_REMINDER_SECONDS (0 turns reminders off)."""
    lead = min(settings.APPROVALS_REMINDER_SECONDS, timeout_seconds // 4)
    return due_at - timedelta(seconds=lead) if lead > 0 else None


def _json_object(value: Any, field: str) -> dict:
    require(isinstance(value, dict), "invalid", f"{field} must be a JSON object.", field=field)
    try:
        audit.normalize(value, field)
    except audit.AuditError as exc:
        raise TransitionRefused("invalid", str(exc), field=field) from None
    return value


def _confidence(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise TransitionRefused("invalid", "Confidence must be a number between 0 and 1.", field="confidence") from None
    require(number.is_finite() and 0 <= number <= 1, "invalid", "Confidence must be a number between 0 and 1.",
            field="confidence")
    return number.quantize(Decimal("0.0001"))


def _requester(workflow: Workflow, requester: Any) -> dict:
    if isinstance(requester, ServiceAccount):
        require(requester.active and requester.workflows.filter(pk=workflow.pk).exists(), "forbidden",
                f"Service account {requester.name} may not ask for {workflow.slug}.")
        return {"requested_by_service": requester, "on_behalf_of_id": requester.owner_id,
                "requester_label": requester.name}
    if isinstance(requester, AbstractBaseUser):
        require(requester.is_active and requester.has_perm(perm(VIEW), workflow), "forbidden",
                f"You may not ask for approvals of {workflow.slug}.")
        return {"requested_by": requester, "requester_label": requester.get_username()}
    require(isinstance(requester, str) and requester.startswith("system:") and len(requester) <= 150, "invalid",
            "A requester is a person, a service account, or a 'system:<name>' label.")
    return {"requester_label": requester}


def _same_request(existing: ApprovalRequest, **asked: Any) -> bool:
    return all(getattr(existing, name) == value for name, value in asked.items())


def _existing_for_key(owner: dict, key: str) -> ApprovalRequest | None:
    lookup = {"idempotency_key": key}
    if "requested_by_service" in owner:
        lookup["requested_by_service"] = owner["requested_by_service"]
    elif "requested_by" in owner:
        lookup["requested_by"] = owner["requested_by"]
    else:
        lookup.update(requester_label=owner["requester_label"], requested_by__isnull=True,
                      requested_by_service__isnull=True)
    return ApprovalRequest.objects.filter(**lookup).first()


def _replay(existing: ApprovalRequest, asked: dict) -> ApprovalRequest:
    if not _same_request(existing, **asked):
        raise TransitionRefused("idempotency_mismatch", "This idempotency key was already used for a different "
                                "request; use a new key.", status=422, field="idempotency_key")
    return existing


@transaction.atomic
def create_request(*, workflow: Workflow, kind: str, action: str, parameters: dict | None = None,
                   evidence: dict | None = None, requester: Any, mode: str = Mode.GATE, quorum: int | None = None,
                   idempotency_key: str = "", confidence: Any = None, subject: Any = None,
                   approver_roles: list[str] | None = None, policy: EscalationPolicy | None = None,
                   rule: dict | None = None, workflow_locked: bool = False) -> ApprovalRequest:
    """Open a request, timed by `policy` or else the workflow's escalation policy for the current
    business or off hours. `approver_roles` must each be among the approvers (and may decide from
    the first level); `rule` is the dispatch rule that asked for it, kept with the request. A request
    of a paused workflow is held from the start (the workflow row is share-locked, so a pause in
    flight either sees it or is seen by it; `workflow_locked` when the caller holds that lock).

    The same requester and idempotency key return the first request (a different request under
    the same key is refused). Audit: `approval.requested`. On commit: the timer for `due_at` and
    the notice to the approvers (request arrived, or override window opened).
    """
    require(kind in ApprovalRequest.Kind.values, "invalid", f"Unknown kind {kind!r}.", field="kind")
    require(mode in Mode.values, "invalid", f"Unknown mode {mode!r}; use gate or override_window.", field="mode")
    action = (action or "").strip()
    require(action and len(action) <= MAX_ACTION, "invalid", "Say which action is asked for (up to 100 characters).",
            field="action")
    key = (idempotency_key or "").strip()
    require(len(key) <= MAX_KEY, "invalid", "Idempotency keys are at most 255 characters.", field="idempotency_key")
    parameters = _json_object(parameters or {}, "parameters")
    evidence = _json_object(evidence or {}, "evidence")
    confidence = _confidence(confidence)
    owner = _requester(workflow, requester)
    if quorum is None:
        governed = (GovernedAction.objects.filter(workflow=workflow, name=action)
                    .values_list("quorum", flat=True).first())
        quorum = governed or 1
    require(isinstance(quorum, int) and 1 <= quorum <= 9, "invalid", "Quorum is between 1 and 9 people.",
            field="quorum")
    approver_roles = sorted(set(approver_roles or []))
    unknown = sorted(set(approver_roles) - set(Group.objects.filter(name__in=approver_roles)
                                               .values_list("name", flat=True)))
    require(not unknown, "invalid", f"Unknown approver role {', '.join(unknown)}.", field="approver_roles")
    subject_type, subject_id = audit.describe_subject(subject) if subject is not None else ("", "")
    asked = {"workflow_id": workflow.pk, "kind": kind, "action": action, "parameters": parameters, "mode": mode}
    now = clock.now()
    if policy is None:
        policy = policy_for(workflow, now, mode)
        timeout = policy.first_timeout_seconds
    else:
        require(policy.mode == mode and policy.workflow_id in (None, workflow.pk), "invalid",
                f"The escalation policy {policy} does not time {mode} requests of {workflow.slug}.", field="policy")
        timeout = policy.levels.order_by("position").values_list("timeout_seconds", flat=True).first()
    require(timeout is not None, "misconfigured",
            f"The escalation policy {policy} has no levels; "
            "an administrator must add one before requests can wait on it.")
    due_at = now + timedelta(seconds=timeout)
    paused = workflow.paused if workflow_locked else _paused_under_share_lock(workflow)
    req = ApprovalRequest(
        workflow=workflow, kind=kind, action=action, parameters=parameters, evidence=evidence,
        confidence=confidence, idempotency_key=key, mode=mode, policy=policy, due_at=due_at,
        remind_at=_reminder_time(due_at, timeout), level=0, quorum=quorum,
        state=State.PENDING, created_at=now, subject_type=subject_type, subject_id=subject_id,
        approver_roles=approver_roles, rule=rule or {}, held_at=now if paused else None, **owner,
    )
    try:
        with transaction.atomic():
            req.save()
    except IntegrityError:
        # The key was used before, or at the same moment: the first request stands and this caller
        # gets it. The unique constraint decides; no lookup precedes the insert.
        existing = _existing_for_key(owner, key) if key else None
        if existing is None:
            raise
        return _replay(existing, asked)
    event = Notice.Event.WINDOW_OPENED if mode == Mode.OVERRIDE_WINDOW else Notice.Event.REQUESTED
    notice = notifications.open_notice(req, event)
    audit.record(requester, "approval.requested", req, data={
        "kind": kind, "action": action, "parameters": parameters, "evidence": evidence,
        "confidence": confidence, "mode": mode, "quorum": quorum, "level": 0, "due_at": due_at,
        "policy": policy.pk, "idempotency_key": key,
        "subject": {"type": subject_type, "id": subject_id} if subject_type else None,
        **({"approver_roles": approver_roles} if approver_roles else {}),
        **({"rule": rule} if rule else {}),
    })
    if paused:
        audit.record(requester, "approval.held", req, reason="the workflow was paused when it was asked",
                     data={"level": 0, "due_at": due_at, "remaining_seconds": float(timeout)})
    _after_commit(req, notice)
    return req


def _paused_under_share_lock(workflow: Workflow) -> bool:
    lock = " FOR SHARE" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT paused FROM governance_workflow WHERE id = %s{lock}", [workflow.pk])
        row = cursor.fetchone()
    return bool(row and row[0])


def _after_commit(req: ApprovalRequest, notice: Notice | None) -> None:
    """Side effects of a committed transition: the next timer, the notice, the outcome handlers."""
    if req.is_pending:
        transaction.on_commit(partial(messages.schedule_timer, req.pk, req.level, req.due_at))
    else:
        transaction.on_commit(partial(messages.publish_outcome, req.pk))
        transaction.on_commit(partial(waiting.request_closed, req.pk))  # wake long-polls, send the callback
    if notice is not None:
        transaction.on_commit(partial(messages.publish_delivery, notice.pk))


def _close(req: ApprovalRequest, state: str, *, by: str, now: datetime) -> Notice | None:
    require(req.can_become(state), "not_pending", req.closed_summary())
    req.state, req.closed_at, req.closed_by_label = state, now, by[:300]
    req.claim_by, req.held_at = executions.claim_deadline(req, now), None
    req.save(update_fields=["state", "closed_at", "closed_by_label", "claim_by", "held_at"])
    return notifications.open_notice(req, Notice.Event.DECIDED)


@transaction.atomic
def record_decision(request_id: int, *, actor: AbstractBaseUser, verdict: str, justification: str = "",
                    reason: str = "") -> ApprovalRequest:
    """Record one person's verdict; close the request on a reject or override, or when the quorum
    of distinct approvals is reached.

    Refuses (nothing changes): outside scope or level (403), four-eyes (403), already closed (409
    naming who closed it and when), already decided by this person (409), a verdict the mode does
    not offer, a reject or override without justification, an override without a reason category
    (422). Audit: `approval.decided`; `approval.<approved|rejected|overridden>` when it closes.
    On commit: the outcome handlers and the "decided" notice.
    """
    req = _lock(request_id)
    if (refused := eligibility.scope_refusal(actor, req)) is not None:
        raise refused
    # Someone in scope who arrives late learns who decided, before any other refusal.
    require(req.is_pending, "not_pending", req.closed_summary())
    require(not req.is_held, "paused", f"On hold: {req.hold_summary()}. Nothing can be decided until it is resumed.")
    if (refused := eligibility.decider_refusal(actor, req)) is not None:
        raise refused
    require(verdict in req.allowed_verdicts(), "invalid",
            f"This {req.get_mode_display()} can be answered with {' or '.join(req.allowed_verdicts())}.",
            field="verdict")
    justification = (justification or "").strip()
    reason = (reason or "").strip()
    require(verdict == Verdict.APPROVE or justification, "justification_required",
            "Say why: rejecting or overriding needs a justification.", field="justification")
    require(len(justification) <= MAX_JUSTIFICATION, "invalid",
            f"Keep the justification under {MAX_JUSTIFICATION:,} characters.", field="justification")
    require(reason == "" or reason in Decision.Reason.values, "invalid", f"Unknown reason {reason!r}.", field="reason")
    require(verdict != Verdict.OVERRIDE or reason, "invalid",
            "Choose why you override: expected behaviour, noise, known change or other.", field="reason")
    mine = req.decisions.filter(decided_by=actor).first()
    if mine is not None:
        at = timezone.localtime(mine.decided_at).strftime("%H:%M")
        raise TransitionRefused("already_decided", f"You already approved this request at {at}; it needs "
                                f"{req.quorum} approvals from different people.")

    now = clock.now()
    try:
        with transaction.atomic():
            decision = Decision.objects.create(request=req, decided_by=actor, verdict=verdict,
                                               justification=justification, reason=reason, level=req.level,
                                               decided_at=now)
    except IntegrityError:
        raise TransitionRefused("already_decided", "You already decided this request.") from None
    approvers = list(req.decisions.filter(verdict=Verdict.APPROVE).select_related("decided_by")
                     .order_by("decided_at", "pk"))
    missing = _missing_roles(req, approvers)
    new_state = req.state_after(verdict, approvals=len(approvers), missing_roles=missing)
    notice = None
    if new_state != State.PENDING:
        deciders = [d.decided_by for d in approvers] if new_state == State.APPROVED else [actor]
        notice = _close(req, new_state, by=" and ".join(_label(p) for p in deciders), now=now)
    audit.record(actor, "approval.decided", req, reason=justification, data={
        "decision": decision.pk, "verdict": verdict, "reason": reason, "level": req.level,
        "approvals": len(approvers), "quorum": req.quorum, **({"missing_roles": list(missing)} if missing else {}),
    })
    if new_state != State.PENDING:
        audit.record(actor, f"approval.{new_state}", req, data={"decisions": [d.pk for d in req.decisions.all()]})
        _after_commit(req, notice)
    return req


def _missing_roles(req: ApprovalRequest, approvals: list[Decision]) -> tuple[str, ...]:
    """The approver roles the request needs that none of its approvers holds yet."""
    if not req.approver_roles:
        return ()
    held = set(Group.objects.filter(name__in=req.approver_roles, user__in=[d.decided_by_id for d in approvals])
               .values_list("name", flat=True))
    return tuple(role for role in req.approver_roles if role not in held)


def _next_level(req: ApprovalRequest) -> EscalationLevel | None:
    return EscalationLevel.objects.filter(policy_id=req.policy_id, position=req.level + 1).first()


def _lock_pending(request_id: int, level: int | None) -> ApprovalRequest:
    req = _lock(request_id)
    require(req.is_pending, "not_pending", req.closed_summary())
    require(level is None or req.level == level, "conflict",
            f"This request moved on to level {req.level + 1} meanwhile.")
    return req


def _require_due(req: ApprovalRequest) -> None:
    require(req.due_at <= clock.now(), "not_due", "This request's time has not run out yet.")


@transaction.atomic
def escalate_request(request_id: int, *, actor: AbstractBaseUser | None = None, level: int | None = None,
                     reason: str = "") -> ApprovalRequest:
    """Hand the request to its next escalation level; it stays pending with a new due time.

    With no actor it is the timer: the due time must have passed, and the next deadline counts
    from the old one, so a chain of levels ends exactly when the policy says. A person (someone
    who may decide it) can also ask for the next level at once. `level` guards against a late or
    duplicate timer. Audit: `approval.escalated`. On commit: the next timer and the notice.
    """
    req = _lock_pending(request_id, level)
    require(not req.is_held, "paused", f"On hold: {req.hold_summary()}.")
    nxt = _next_level(req)
    require(nxt is not None, "conflict", "This request is already at its last escalation level.")
    if actor is None:
        _require_due(req)
    else:
        refused = eligibility.refusal(actor, req)
        if refused is not None:
            raise refused
    return _escalate(req, nxt, actor=actor, reason=(reason or "").strip())


def _escalate(req: ApprovalRequest, nxt: EscalationLevel, *, actor: AbstractBaseUser | None = None,
              reason: str = "") -> ApprovalRequest:
    now = clock.now()
    base = req.due_at if actor is None else now
    req.level, req.escalated_at = nxt.position, now
    req.due_at = base + timedelta(seconds=nxt.timeout_seconds)
    req.remind_at = _reminder_time(req.due_at, nxt.timeout_seconds)
    req.save(update_fields=["level", "escalated_at", "due_at", "remind_at"])
    notice = notifications.open_notice(req, Notice.Event.ESCALATED)
    audit.record(actor or TIMER_ACTOR, "approval.escalated", req, reason=reason,
                 data={"level": req.level, "due_at": req.due_at, "by": "person" if actor else "timer"})
    _after_commit(req, notice)
    return req


def _run_out(req: ApprovalRequest, state: str) -> ApprovalRequest:
    """The last level ran out: expired (terminal action reject) or auto-approved (proceed).
    Audit: `approval.expired` / `approval.auto_approved`."""
    notice = _close(req, state, by="", now=clock.now())
    audit.record(TIMER_ACTOR, f"approval.{state}", req, data={"level": req.level, "due_at": req.due_at})
    _after_commit(req, notice)
    return req


@transaction.atomic
def cancel_request(request_id: int, *, actor: Any, reason: str) -> ApprovalRequest:
    """Withdraw a pending request: by whoever asked (person, service account or system), or an
    administrator. Audit: `approval.cancelled`. On commit: the outcome handlers and the notice."""
    req = _lock(request_id)
    reason = (reason or "").strip()
    if isinstance(actor, ServiceAccount):
        allowed = actor.pk == req.requested_by_service_id
    elif isinstance(actor, AbstractBaseUser):
        allowed = actor.pk == req.requested_by_id or is_administrator(actor)
    else:
        allowed = isinstance(actor, str) and actor.startswith("system:")
    require(allowed, "forbidden", "Only whoever asked, or an administrator, can cancel this request.")
    require(reason, "invalid", "Say why the request is cancelled.", field="reason")
    require(len(reason) <= MAX_JUSTIFICATION, "invalid", "Keep the reason shorter.", field="reason")
    require(req.is_pending, "not_pending", req.closed_summary())
    notice = _close(req, State.CANCELLED, by=_label(actor), now=clock.now())
    audit.record(actor, "approval.cancelled", req, reason=reason, data={"level": req.level})
    _after_commit(req, notice)
    return req


def _fire(req: ApprovalRequest, level: int | None) -> str:
    """The timer transition on a locked row: escalate, expire or auto-approve, whichever is due."""
    if not req.is_pending or (level is not None and req.level != level):
        return "unchanged"
    if req.is_held:
        return "held"
    if req.due_at > clock.now():
        return "not_due"
    nxt = _next_level(req)
    if nxt is not None:
        _escalate(req, nxt)
        return "escalated"
    if req.policy.terminal_action == EscalationPolicy.TerminalAction.PROCEED:
        _run_out(req, State.AUTO_APPROVED)
        return State.AUTO_APPROVED
    _run_out(req, State.EXPIRED)
    return State.EXPIRED


@transaction.atomic
def handle_due(request_id: int, level: int | None = None) -> str:
    """Fire a request's timer if it is due: escalate, expire or auto-approve, whichever applies.

    Safe to call any number of times, late or early: a closed request, a moved-on level or a
    deadline not reached yet changes nothing. Returns what happened: escalated, expired,
    auto_approved, or unchanged / not_due / missing.
    """
    req = (ApprovalRequest.objects.select_for_update(of=("self",)).select_related("workflow", "policy")
           .filter(pk=request_id).first())
    return "missing" if req is None else _fire(req, level)


def handle_all_due(limit: int = 200) -> int:
    """The sweep: handle every overdue request, oldest deadline first, each in its own transaction.

    Rows another sweeper or a decision holds are skipped (SKIP LOCKED), so sweepers never wait on
    each other or double-fire. A request whose transition fails is left for the next sweep.
    """
    handled, failed = 0, []
    while handled < limit:
        req = None
        try:
            with transaction.atomic():
                overdue = ApprovalRequest.objects.overdue(clock.now()).exclude(pk__in=failed).order_by("due_at")
                req = (overdue.select_for_update(of=("self",), skip_locked=True)
                       .select_related("workflow", "policy").first())
                if req is None:
                    break
                _fire(req, None)
        except Exception:
            if req is None:
                raise
            logger.exception("timer of approval request %s failed; the next sweep tries again", req.pk)
            failed.append(req.pk)
            continue
        handled += 1
    return handled


@transaction.atomic
def define_policy(*, actor: AbstractBaseUser, workflow: Workflow | None, mode: str,
                  hours: str = EscalationPolicy.Hours.ANY, terminal_action: str | None = None,
                  levels: list[dict]) -> EscalationPolicy:
    """Set the escalation levels of a workflow (or the default, workflow=None) for a mode and hours.

    `levels`: [{"groups": ["approver"], "people": [user, ...], "timeout_seconds": 600, "replaces": False}, ...]
    (`replaces`: from this level on, the earlier levels' people no longer decide).
    Requests already open keep their policy row, so they follow the new levels from their next
    escalation on. Administrators only (and release managers of the workflow). Audit:
    `approval.policy_defined`.
    """
    require(is_administrator(actor) or (workflow is not None and actor.has_perm(perm("manage_rollouts"), workflow)),
            "forbidden", "You may not change escalation policies.")
    require(mode in Mode.values, "invalid", f"Unknown mode {mode!r}.", field="mode")
    require(hours in EscalationPolicy.Hours.values, "invalid", f"Unknown hours {hours!r}.", field="hours")
    terminal_action = terminal_action or (EscalationPolicy.TerminalAction.PROCEED if mode == Mode.OVERRIDE_WINDOW
                                          else EscalationPolicy.TerminalAction.REJECT)
    require(terminal_action == EscalationPolicy.TerminalAction.REJECT or mode == Mode.OVERRIDE_WINDOW, "invalid",
            "A gate cannot proceed on its own; its last level ends in rejection.", field="terminal_action")
    require(levels and len(levels) <= 10, "invalid", "A policy has between 1 and 10 levels.", field="levels")
    described = []
    for i, spec in enumerate(levels):
        timeout = spec.get("timeout_seconds")
        require(isinstance(timeout, int) and 1 <= timeout <= 7 * 24 * 3600, "invalid",
                f"Level {i + 1}: the timeout is between 1 second and 7 days.", field=f"levels[{i}].timeout_seconds")
        groups = list(Group.objects.filter(name__in=spec.get("groups", [])))
        require(len(groups) == len(set(spec.get("groups", []))), "invalid", f"Level {i + 1}: unknown role group.",
                field=f"levels[{i}].groups")
        people = list(spec.get("people", []))
        require(groups or people, "invalid", f"Level {i + 1}: name a role group or people.", field=f"levels[{i}]")
        replaces = bool(spec.get("replaces", False))
        require(not replaces or i > 0, "invalid", "The first level has no previous level to replace.",
                field=f"levels[{i}].replaces")
        described.append((groups, people, timeout, replaces))

    lookup = {"workflow": workflow, "hours": hours, "mode": mode}
    policy = EscalationPolicy.objects.select_for_update().filter(**lookup).first()
    if policy is None:
        policy = EscalationPolicy.objects.create(terminal_action=terminal_action, **lookup)
    else:
        policy.terminal_action = terminal_action
        policy.save(update_fields=["terminal_action", "updated_at"])
        # Levels beyond the new last one go; earlier ones are rewritten in place, so open
        # requests pointing at this policy keep a consistent ladder.
        policy.levels.filter(position__gte=len(described)).delete()
    for position, (groups, people, timeout, replaces) in enumerate(described):
        level, _ = EscalationLevel.objects.update_or_create(policy=policy, position=position,
                                                            defaults={"timeout_seconds": timeout,
                                                                      "replaces_previous": replaces})
        level.groups.set(groups)
        level.people.set(people)
    audit.record(actor, "approval.policy_defined", policy, workflow=workflow or "", data={
        "mode": mode, "hours": hours, "terminal_action": terminal_action,
        "levels": [{"groups": sorted(g.name for g in groups), "people": sorted(p.get_username() for p in people),
                    "timeout_seconds": timeout, **({"replaces": True} if replaces else {})}
                   for groups, people, timeout, replaces in described],
    })
    return policy


def hold_requests(workflow: Workflow, actor: Any, now: datetime) -> int:
    """The kill switch was engaged (inside pause_workflow's transaction): every pending request of
    the workflow is held, so nobody decides it and no timer escalates, expires or auto-approves
    it. Audit: `approval.held`, one per request."""
    held = 0
    for req in (ApprovalRequest.objects.pending().filter(workflow=workflow, held_at__isnull=True)
                .select_for_update(of=("self",)).order_by("pk")):
        req.held_at = now
        req.save(update_fields=["held_at"])
        audit.record(actor, "approval.held", req, reason=workflow.paused_reason,
                     data={"level": req.level, "due_at": req.due_at, "remaining_seconds": _remaining(req, now)})
        held += 1
    return held


def _remaining(req: ApprovalRequest, at: datetime) -> float:
    return max(0.0, (req.due_at - at).total_seconds())


def release_requests(workflow: Workflow, actor: Any, now: datetime) -> int:
    """The workflow was resumed: held requests get back the time they had left when it was paused.
    Audit: `approval.released`, one per request. On commit: their timers."""
    released = 0
    for req in (ApprovalRequest.objects.pending().filter(workflow=workflow, held_at__isnull=False)
                .select_for_update(of=("self",)).order_by("pk")):
        shift = now - req.held_at
        remaining = _remaining(req, req.held_at)
        req.due_at += shift
        if req.remind_at is not None:
            req.remind_at += shift
        req.held_at = None
        req.save(update_fields=["held_at", "due_at", "remind_at"])
        audit.record(actor, "approval.released", req,
                     data={"level": req.level, "due_at": req.due_at, "remaining_seconds": remaining})
        _after_commit(req, None)
        released += 1
    return released


RULE_FIELDS = {"condition", "outcome", "reason", "quorum", "approver_roles", "policy"}
MAX_RULES = 50


def _rule(workflow: Workflow, spec: dict, where: str) -> dict:
    """One rule of a list, checked and normalised; refused naming the field and the error."""
    require(isinstance(spec, dict), "invalid", f"{where}: a rule is an object with a condition and an outcome.",
            field=where)
    unknown = sorted(set(spec) - RULE_FIELDS)
    require(not unknown, "invalid", f"{where}: unknown field {', '.join(unknown)}.", field=f"{where}.{unknown[0]}"
            if unknown else where)
    condition = spec.get("condition")
    require(isinstance(condition, str), "invalid", f"{where}: write the condition as CEL text.",
            field=f"{where}.condition")
    condition = condition.strip()
    error = rules.check(condition)
    require(error is None, "invalid", f"{where}.condition: {error}", field=f"{where}.condition")
    outcome = spec.get("outcome")
    require(outcome in RuleOutcome.values, "invalid",
            f"{where}: the outcome is one of {', '.join(RuleOutcome.values)}.", field=f"{where}.outcome")
    reason = (spec.get("reason") or "").strip()
    require(isinstance(reason, str) and len(reason) <= 500, "invalid",
            f"{where}: keep the reason under 500 characters.", field=f"{where}.reason")
    require(outcome != RuleOutcome.DENY or reason, "invalid",
            f"{where}: a deny says why; the agent is shown the reason.", field=f"{where}.reason")
    rule = {"condition": condition, "outcome": outcome, "reason": reason, "quorum": None, "approver_roles": [],
            "policy": None}
    if outcome != RuleOutcome.APPROVE:
        stray = [f for f in ("quorum", "approver_roles", "policy") if spec.get(f) not in (None, [], "")]
        require(not stray, "invalid", f"{where}: {stray[0] if stray else ''} only goes with an approve outcome.",
                field=f"{where}.{stray[0]}" if stray else where)
        return rule
    quorum = spec.get("quorum", 1)
    require(isinstance(quorum, int) and not isinstance(quorum, bool) and 1 <= quorum <= 9, "invalid",
            f"{where}: the quorum is between 1 and 9 people.", field=f"{where}.quorum")
    roles = spec.get("approver_roles") or []
    require(isinstance(roles, list) and all(isinstance(r, str) for r in roles), "invalid",
            f"{where}: approver roles are a list of role names.", field=f"{where}.approver_roles")
    roles = sorted(set(roles))
    unknown_roles = sorted(set(roles) - set(Group.objects.filter(name__in=roles).values_list("name", flat=True)))
    require(not unknown_roles, "invalid", f"{where}: unknown role {', '.join(unknown_roles)}.",
            field=f"{where}.approver_roles")
    require(len(roles) <= quorum, "invalid", f"{where}: {len(roles)} required roles need a quorum of at least "
            f"{len(roles)}.", field=f"{where}.quorum")
    policy = spec.get("policy")
    if policy is not None:
        policy = policy if isinstance(policy, EscalationPolicy) else EscalationPolicy.objects.filter(pk=policy).first()
        require(policy is not None and policy.mode == Mode.GATE and policy.workflow_id in (None, workflow.pk),
                "invalid", f"{where}: the policy must be a gate policy of {workflow.slug} or a default one.",
                field=f"{where}.policy")
    rule.update(quorum=quorum, approver_roles=roles, policy=policy)
    return rule


@transaction.atomic
def set_action_rules(action_id: int, *, actor: AbstractBaseUser, rules: list[dict],
                     shadow: bool = False) -> list[ActionRule]:
    """Replace a governed action's live (or shadow) rule list, in order. Every condition is compiled
    first; one error refuses the whole list, naming the rule, the position in the condition and the
    message. Release managers of the workflow and administrators. Audit: `action.rules_set` with
    the old and the new list."""
    action = GovernedAction.objects.select_for_update().select_related("workflow").filter(pk=action_id).first()
    require(action is not None, "not_found", "This governed action does not exist.")
    workflow = action.workflow
    require(is_administrator(actor) or actor.has_perm(perm("manage_rollouts"), workflow), "forbidden",
            f"You may not change the rules of {workflow.slug}.")
    require(isinstance(rules, list) and len(rules) <= MAX_RULES, "invalid",
            f"A rule list has at most {MAX_RULES} rules.", field="rules")
    checked = [_rule(workflow, spec, f"rules[{i}]") for i, spec in enumerate(rules)]
    existing = action.rules.filter(shadow=shadow)
    before = [r.as_data() for r in existing.order_by("position")]
    existing.delete()
    created = [ActionRule.objects.create(action=action, shadow=shadow, position=i, **spec)
               for i, spec in enumerate(checked)]
    audit.record(actor, "action.rules_set", action, workflow=workflow, data={
        "action": action.name, "shadow": shadow,
        "before": [{k: v for k, v in r.items() if k != "id"} for r in before],
        "rules": [{k: v for k, v in r.as_data().items() if k != "id"} for r in created],
    })
    return created

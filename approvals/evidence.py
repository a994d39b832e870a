"""The evidence bundle of one approval request: what was asked, under which settings and rule,
who decided on what evidence, what was executed, and the audit events that prove it.

Read-only. Apps whose subjects carry signals (rollouts) register a provider in SIGNAL_PROVIDERS.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable, Iterable

from django.contrib.auth.decorators import login_required
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from approvals import explain
from approvals.selectors import execution_of, request_for
from audit import log as audit
from audit import sequencing
from audit.models import AuditCheckpoint, AuditEvent
from audit.verify_audit import chain_hash
from core import denials
from governance.models import Workflow

REQUEST_SUBJECT = "approvals.approvalrequest"
# subject type -> (request, decisions) -> rows of {"decision", "metric", "value", "at"}
SIGNAL_PROVIDERS: dict[str, Callable[..., list[dict]]] = {}


# --- the bundle --------------------------------------------------------------

def _chain_entries(events: Iterable[AuditEvent]) -> list[dict]:
    return [{"seq": e.seq, "prev_hash": e.prev_hash, "hash": e.hash, "event": audit.event_payload(e),
             "canonical": e.canonical, "hash_ok": chain_hash(e.prev_hash, e.canonical) == e.hash} for e in events]


def inclusion_proofs(events: list[AuditEvent]) -> dict:
    """Each event proved in the tree of the latest signed checkpoint, verifiable with only the log's
    public key (`verify_audit.py --bundle`). Events newer than that checkpoint wait for the next one
    (seconds: AUDIT_CHECKPOINT_INTERVAL_SECONDS)."""
    signed = sequencing.latest_tree_head()
    size = signed.tree_size if signed else 0
    proofs = [{"seq": e.seq, "index": e.seq - 1, "tree_size": size,
               "proof": [base64.b64encode(h).decode() for h in sequencing.inclusion_proof(e.seq - 1, size)]}
              for e in events if e.seq <= size]
    return {"checkpoint_note": signed.note if signed else None, "public_key": sequencing.vkey(), "proofs": proofs,
            "not_yet_under_a_checkpoint": [e.seq for e in events if e.seq > size]}


def workflow_settings_before(workflow, seq: int) -> tuple[dict, int | None]:
    """The workflow's governance settings as the audit trail had them just before event `seq`."""
    settings_, source = {}, None
    history = AuditEvent.objects.filter(
        subject_type="governance.workflow", subject_id=str(workflow.pk), seq__lt=seq,
        action__in=["workflow.created", "workflow.updated"]).order_by("seq")
    for event in history:
        if event.action == "workflow.created":
            settings_ = dict(event.data)
        else:
            settings_.update({field: change["to"] for field, change in event.data.get("changes", {}).items()})
        source = event.seq
    return settings_, source


def tier_in_force(workflow, settings_: dict, at) -> int:
    """The autonomy tier the recorded settings gave at `at` (business or off hours)."""
    if not settings_:
        return workflow.tier_at(at)
    then = Workflow(
        autonomy_tier=settings_.get("autonomy_tier", workflow.autonomy_tier),
        off_hours_tier=settings_.get("off_hours_tier", workflow.off_hours_tier),
        timezone=settings_.get("timezone", workflow.timezone),
        business_days=settings_.get("business_days", workflow.business_days),
        business_start=dt.time.fromisoformat(str(settings_.get("business_start", workflow.business_start))),
        business_end=dt.time.fromisoformat(str(settings_.get("business_end", workflow.business_end))),
        holidays=settings_.get("holidays", []),  # none before holidays were recorded
    )
    return then.tier_at(at)


def policy_in_force(req, seq: int) -> dict:
    """The escalation policy that timed the request, with its levels as last defined before it."""
    policy = req.policy
    defined = (AuditEvent.objects.filter(subject_type="approvals.escalationpolicy", subject_id=str(policy.pk),
                                         action="approval.policy_defined", seq__lt=seq).order_by("-seq").first())
    if defined is not None:
        levels = [{"position": i, **level} for i, level in enumerate(defined.data.get("levels", []))]
    else:  # a built-in default policy: never redefined, so its levels are the ones stored
        levels = [{"position": level.position, "groups": sorted(g.name for g in level.groups.all()),
                   "people": sorted(p.get_username() for p in level.people.all()),
                   "timeout_seconds": level.timeout_seconds} for level in policy.levels.order_by("position")]
    return {"id": policy.pk, "applies_to": policy.workflow.slug if policy.workflow_id else "every workflow (default)",
            "mode": policy.mode, "hours": policy.hours, "terminal_action": policy.terminal_action,
            "levels": levels, "defined_in_event": defined.seq if defined else None}


def signals_at_decisions(req, decisions: list) -> list[dict]:
    """The signals a decision was taken on, from the app that owns the request's subject
    (rollouts registers one for rollout actions)."""
    provider = SIGNAL_PROVIDERS.get(req.subject_type)
    if provider is None or not req.subject_id.isdigit():
        return []
    return provider(req, decisions)


def rule_that_asked(req) -> dict | None:
    """The dispatch rule that asked for the request, as kept with it: its text and the values it read."""
    if not req.rule:
        return None
    rule = req.rule
    return {"id": rule.get("id"), "number": (rule.get("position") or 0) + 1, "text": explain.rule_line(rule),
            "condition": rule.get("condition"), "outcome": rule.get("outcome"), "reason": rule.get("reason", ""),
            "quorum": rule.get("quorum"), "approver_roles": rule.get("approver_roles", []),
            "values": rule.get("values", {}), "values_read": explain.values_read(rule)}


def execution_record(req, execution) -> dict | None:
    """The execution an approved agent action granted: claimed, reported, or expired unclaimed."""
    if execution is None and req.claim_by is None and req.claim_expired_at is None:
        return None
    entry = {"claim_by": req.claim_by, "claim_expired_at": req.claim_expired_at, "id": None, "state": None,
             "claimed_at": None, "expires_at": None, "reported_at": None, "detail": ""}
    if execution is not None:
        entry.update(id=execution.pk, state=execution.state, claimed_at=execution.granted_at,
                     expires_at=execution.expires_at, reported_at=execution.reported_at, detail=execution.detail)
    return entry


def evidence_bundle(req) -> dict:
    """Everything an auditor needs to show what was decided on one request, by whom, on what evidence,
    and what was then executed."""
    events = list(AuditEvent.objects.filter(subject_type=REQUEST_SUBJECT, subject_id=str(req.pk)).order_by("seq"))
    requested = next((e for e in events if e.action == "approval.requested"), None)
    anchor = requested.seq if requested else (events[0].seq if events else audit.head()[0] + 1)
    workflow_settings, settings_event = workflow_settings_before(req.workflow, anchor)
    decisions = list(req.decisions.select_related("decided_by").order_by("decided_at", "pk"))
    escalations = [{"seq": e.seq, "at": e.occurred_at, "by": e.actor_label,
                    "level": e.data.get("level"), "due_at": e.data.get("due_at"), "reason": e.reason}
                   for e in events if e.action == "approval.escalated"]
    checkpoint = (AuditCheckpoint.objects.filter(head_seq__gte=events[-1].seq).order_by("head_seq", "id").first()
                  if events else None)
    first_decision = decisions[0].decided_at if decisions else None
    execution = execution_of(req)
    return {
        "bundle": "ringfence-evidence", "version": 3,
        "request": {
            "id": req.pk, "workflow": req.workflow.slug, "workflow_name": req.workflow.name,
            "kind": req.kind, "action": req.action, "parameters": req.parameters, "mode": req.mode,
            "quorum": req.quorum, "approver_roles": req.approver_roles, "requested_by": req.requester_label,
            "requested_by_kind": ("service" if req.requested_by_service_id
                                  else "user" if req.requested_by_id else "system"),
            "idempotency_key": req.idempotency_key, "confidence": req.confidence,
            "subject": {"type": req.subject_type, "id": req.subject_id} if req.subject_type else None,
            "created_at": req.created_at,
        },
        "in_force": {
            "tier": tier_in_force(req.workflow, workflow_settings, req.created_at),
            "business_hours": req.workflow.in_business_hours(req.created_at),
            "workflow_settings": workflow_settings, "settings_from_event": settings_event,
            "policy": policy_in_force(req, anchor),
        },
        "rule": rule_that_asked(req),
        "evidence": {"summary": (req.evidence or {}).get("summary", ""), "metrics": req.evidence_metrics(),
                     "links": req.evidence_links(), "other": req.evidence_extra()},
        "signals": signals_at_decisions(req, decisions),
        "decisions": [{"by": d.decided_by.get_username(), "name": d.decided_by.get_full_name(), "verdict": d.verdict,
                       "justification": d.justification, "reason_category": d.reason, "level": d.level,
                       "decided_at": d.decided_at} for d in decisions],
        "timers": {
            "created_at": req.created_at,
            "first_due_at": requested.data.get("due_at") if requested else None,
            "escalations": escalations, "level": req.level, "due_at": req.due_at, "remind_at": req.remind_at,
            "closed_at": req.closed_at,
            "seconds_to_first_decision": (first_decision - req.created_at).total_seconds() if first_decision else None,
            "seconds_to_close": (req.closed_at - req.created_at).total_seconds() if req.closed_at else None,
        },
        "outcome": {"state": req.state, "closed_at": req.closed_at, "closed_by": req.closed_by_label,
                    "summary": req.closed_summary(), "timeline": explain.execution_timeline(req, execution, dt.UTC)},
        "execution": execution_record(req, execution),
        "audit": {"events": _chain_entries(events),
                  "checkpoint": json.loads(audit.checkpoint_line(checkpoint)) if checkpoint else None,
                  **inclusion_proofs(events)},
    }


def _request_in_scope(request: HttpRequest, pk: int):
    req = request_for(request.user, pk)
    if req is None:
        raise denials.out_of_scope(request, "approval request", pk)
    return req


# --- the pages ---------------------------------------------------------------------------------

@require_GET
@login_required
def page(request: HttpRequest, pk: int) -> HttpResponse:
    bundle = evidence_bundle(_request_in_scope(request, pk))
    return render(request, "approvals/evidence.html", {"bundle": bundle, "req_id": pk})


@require_GET
@login_required
def json_file(request: HttpRequest, pk: int) -> HttpResponse:
    bundle = evidence_bundle(_request_in_scope(request, pk))
    response = HttpResponse(json.dumps(bundle, cls=DjangoJSONEncoder, indent=2, ensure_ascii=False),
                            content_type="application/json; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="ringfence-evidence-request-{pk}.json"'
    return response

"""Reads the queue, the request page and the API need; scope comes from governance.selectors.

Every list is one SQL query whatever the number of requests or workflows: scope, eligibility
(the escalation levels that name the person) and the counts the rows show are subqueries.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import Count, Exists, F, IntegerField, OuterRef, Prefetch, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce

from approvals.models import (
    ActionRule,
    ApprovalRequest,
    Decision,
    EscalationLevel,
    EscalationPolicy,
    Execution,
    Mode,
    ShadowDifference,
)
from audit.models import AuditEvent
from governance.models import GovernedAction, Workflow
from governance.permissions import APPROVE, CONTAIN
from governance.selectors import workflows_visible_to, workflows_with_perm

State = ApprovalRequest.State
QUEUE_LIMIT = 50
RECENT_LIMIT = 10
DIFFERENCES_SHOWN = 20


def requests_visible_to(user: AbstractBaseUser) -> QuerySet[ApprovalRequest]:
    """Requests of the workflows the person may see (auditors: all). Anything else is a 404."""
    return ApprovalRequest.objects.filter(workflow__in=workflows_visible_to(user))


def request_for(user: AbstractBaseUser, pk: int) -> ApprovalRequest | None:
    return (requests_visible_to(user).select_related("workflow", "policy", "requested_by", "requested_by_service")
            .filter(pk=pk).first())


def _levels_naming(user: AbstractBaseUser) -> QuerySet[EscalationLevel]:
    return EscalationLevel.objects.filter(policy_id=OuterRef("policy_id")).filter(Q(groups__user=user) | Q(people=user))


def _needs_a_role_of(user: AbstractBaseUser) -> Q:
    """Requests whose approvers must include one of the person's roles (a dispatch rule's
    approver_roles): they are asked from the first level."""
    needs = Q(pk__in=[])
    for role in user.groups.values_list("name", flat=True):
        # JSON containment on PostgreSQL; SQLite (zero-setup) has none, so its JSON text is searched.
        needs |= (Q(approver_roles__contains=[role]) if connection.vendor == "postgresql"
                  else Q(approver_roles__icontains=f'"{role}"'))
    return needs


def decidable_by(user: AbstractBaseUser) -> QuerySet[ApprovalRequest]:
    """Pending requests the person may decide now: in scope, named by the current or an earlier
    level, and not asked by them or by a service account they own (four-eyes)."""
    if not user.is_authenticated or not user.is_active:
        return ApprovalRequest.objects.none()
    scope = Q(workflow__in=workflows_with_perm(user, APPROVE)) | Q(
        kind__in=ApprovalRequest.CONTAINMENT_KINDS, workflow__in=workflows_with_perm(user, CONTAIN))
    pending = ApprovalRequest.objects.pending().filter(scope)
    if not user.is_superuser:
        replaced_up_to = (EscalationLevel.objects.filter(policy_id=OuterRef(OuterRef("policy_id")),
                                                         replaces_previous=True,
                                                         position__lte=OuterRef(OuterRef("level")))
                          .order_by("-position").values("position")[:1])
        named = Exists(_levels_naming(user).filter(
            position__lte=OuterRef("level"),
            position__gte=Coalesce(Subquery(replaced_up_to, output_field=IntegerField()), Value(0))))
        pending = pending.filter(named | _needs_a_role_of(user))
    return (pending.exclude(requested_by=user).exclude(on_behalf_of=user)
            .exclude(requested_by_service__owner=user))


@dataclass(frozen=True)
class QueueFilters:
    workflow: str = ""
    kind: str = ""
    escalated: bool = False
    mine: bool = False


def queue_for(user: AbstractBaseUser, filters: QueueFilters = QueueFilters()) -> QuerySet[ApprovalRequest]:
    """The person's queue, most urgent first (least time left to the deadline)."""
    approvals = (Decision.objects.filter(request=OuterRef("pk"), verdict=Decision.Verdict.APPROVE)
                 .values("request").annotate(n=Count("pk")).values("n"))
    levels = (EscalationLevel.objects.filter(policy_id=OuterRef("policy_id"))
              .values("policy_id").annotate(n=Count("pk")).values("n"))
    queue = decidable_by(user).annotate(
        approvals=Coalesce(Subquery(approvals, output_field=IntegerField()), Value(0)),
        decided_by_me=Exists(Decision.objects.filter(request=OuterRef("pk"), decided_by=user)),
        assigned_to_me=Exists(_levels_naming(user).filter(position=OuterRef("level"))),
        levels_total=Subquery(levels, output_field=IntegerField()),
        terminal=F("policy__terminal_action"),
    ).select_related("workflow", "requested_by_service")
    if filters.workflow:
        queue = queue.filter(workflow__slug=filters.workflow)
    if filters.kind:
        queue = queue.filter(kind=filters.kind)
    if filters.escalated:
        queue = queue.filter(level__gt=0)
    if filters.mine:
        queue = queue.filter(assigned_to_me=True)
    return queue.order_by("due_at", "pk")


def queue_workflows(user: AbstractBaseUser) -> QuerySet[Workflow]:
    """The workflows the queue can be filtered by: those the person decides for."""
    return Workflow.objects.filter(Q(pk__in=workflows_with_perm(user, APPROVE).values("pk"))
                                   | Q(pk__in=workflows_with_perm(user, CONTAIN).values("pk"))).order_by("slug")


def recently_closed(user: AbstractBaseUser, limit: int = RECENT_LIMIT) -> list[ApprovalRequest]:
    """The last requests closed in the person's decision scope, newest first."""
    scope = Q(workflow__in=workflows_with_perm(user, APPROVE)) | Q(
        kind__in=ApprovalRequest.CONTAINMENT_KINDS, workflow__in=workflows_with_perm(user, CONTAIN))
    return list(ApprovalRequest.objects.exclude(state=State.PENDING).filter(scope)
                .select_related("workflow").order_by("-closed_at", "-pk")[:limit])


def history_of(req: ApprovalRequest) -> QuerySet[AuditEvent]:
    """The request's audit events, oldest first: its history as the trail recorded it."""
    return (AuditEvent.objects.filter(subject_type=ApprovalRequest._meta.label_lower, subject_id=str(req.pk))
            .order_by("seq"))


def execution_of(req: ApprovalRequest) -> Execution | None:
    """The execution claimed on an approved request, if any."""
    return Execution.objects.filter(request=req).first()


def actions_visible_to(user: AbstractBaseUser) -> QuerySet[GovernedAction]:
    """Governed actions of the workflows the person may see; anything else is a 404."""
    return GovernedAction.objects.filter(workflow__in=workflows_visible_to(user)).select_related("workflow")


def rules_of(action: GovernedAction) -> tuple[list[ActionRule], list[ActionRule]]:
    """The action's live rules and its shadow rules, each in the order they are tried."""
    rules = list(action.rules.select_related("policy__workflow").order_by("shadow", "position"))
    return [r for r in rules if not r.shadow], [r for r in rules if r.shadow]


def rules_last_set(action: GovernedAction, *, shadow: bool) -> AuditEvent | None:
    """The audit event that last set the action's live (or shadow) rule list."""
    return (AuditEvent.objects.filter(subject_type=GovernedAction._meta.label_lower, subject_id=str(action.pk),
                                      action="action.rules_set", data__shadow=shadow).order_by("-seq").first())


def shadow_differences_of(action: GovernedAction) -> QuerySet[ShadowDifference]:
    """Dispatches where the shadow rules would have answered otherwise, newest first."""
    return ShadowDifference.objects.filter(action=action).order_by("-created_at", "-pk")


def policies_of(workflow: Workflow) -> tuple[list[EscalationPolicy], list[EscalationPolicy]]:
    """The workflow's own escalation policies and the defaults (for what it has none of), each
    with its levels, their groups and people read in a fixed number of queries."""
    levels = Prefetch("levels", queryset=EscalationLevel.objects.order_by("position")
                      .prefetch_related("groups", "people"))
    policies = list(EscalationPolicy.objects.filter(Q(workflow=workflow) | Q(workflow__isnull=True))
                    .select_related("workflow").prefetch_related(levels).order_by("mode", "hours"))
    return [p for p in policies if p.workflow_id], [p for p in policies if not p.workflow_id]


def gate_policies_for(workflow: Workflow) -> list[tuple[int, str]]:
    """The policies an approve rule of the workflow may name: its own gate policies, then the defaults."""
    policies = EscalationPolicy.objects.filter(Q(workflow=workflow) | Q(workflow__isnull=True), mode=Mode.GATE)
    return [(p.pk, str(p)) for p in policies.select_related("workflow").order_by("workflow_id", "hours")]

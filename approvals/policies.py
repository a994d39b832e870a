"""Which escalation policy times a request, and the defaults every workflow starts with.

Defaults (DESIGN "Autonomy tiers"): a gate waits 10 minutes for an approver, then 20 minutes for a
senior approver, then expires; an override window gives approvers 2 minutes, then proceeds.
"""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.db.models import OuterRef, Q, Subquery

from approvals.models import EscalationLevel, EscalationPolicy, Mode
from governance.models import Workflow
from governance.permissions import Role

Hours = EscalationPolicy.Hours
Terminal = EscalationPolicy.TerminalAction

# mode: (terminal action, [(role groups, timeout seconds), ...])
DEFAULTS: dict[str, tuple[str, list[tuple[tuple[Role, ...], int]]]] = {
    Mode.GATE: (Terminal.REJECT, [((Role.APPROVER, Role.CONTAINMENT_OWNER), 600), ((Role.SENIOR_APPROVER,), 1200)]),
    Mode.OVERRIDE_WINDOW: (Terminal.PROCEED, [((Role.APPROVER, Role.CONTAINMENT_OWNER), 120)]),
}


def ensure_default_policies(using: str = "default") -> list[EscalationPolicy]:
    """Create the default policies that are missing (run after every migrate and flush)."""
    created = []
    for mode, (terminal, levels) in DEFAULTS.items():
        if EscalationPolicy.objects.using(using).filter(workflow__isnull=True, hours=Hours.ANY, mode=mode).exists():
            continue
        try:
            with transaction.atomic(using=using):
                policy = EscalationPolicy.objects.using(using).create(
                    workflow=None, hours=Hours.ANY, mode=mode, terminal_action=terminal)
                for position, (roles, timeout) in enumerate(levels):
                    level = EscalationLevel.objects.using(using).create(
                        policy=policy, position=position, timeout_seconds=timeout)
                    level.groups.set([Group.objects.using(using).get_or_create(name=role)[0] for role in roles])
        except IntegrityError:  # created at the same moment by another process
            continue
        created.append(policy)
    return created


def policy_for(workflow: Workflow, at: datetime, mode: str) -> EscalationPolicy:
    """The policy in force for `workflow` at `at`: the workflow's own before the default, and one
    for the current business or off hours before one for any time.

    Read with `first_timeout_seconds`, the timeout of its first level (None when it has no
    levels), in the same query."""
    hours = Hours.BUSINESS if workflow.in_business_hours(at) else Hours.OFF_HOURS
    first = EscalationLevel.objects.filter(policy=OuterRef("pk")).order_by("position").values("timeout_seconds")[:1]
    matching = EscalationPolicy.objects.filter(mode=mode, hours__in=[hours, Hours.ANY]).filter(
        Q(workflow=workflow) | Q(workflow__isnull=True)).annotate(first_timeout_seconds=Subquery(first))
    candidates = list(matching)
    if not candidates:
        ensure_default_policies()
        candidates = list(matching.all())
    return min(candidates, key=lambda p: (p.workflow_id is None, p.hours == Hours.ANY))

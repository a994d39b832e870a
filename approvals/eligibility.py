"""Who may decide a request. The services enforce these rules under the row lock; the pages ask
the same functions only to show or hide buttons.

- Scope: the approve permission on the workflow (guardian object permission); for expansion,
  rollback and fallback requests the contain permission also qualifies.
- Level: the person is named (by role group or by name) by the request's current escalation
  level or an earlier one; escalation adds people and keeps the first approvers, unless a level
  is marked `replaces_previous`: from it on, only it and the levels after it count.
  A role the request needs among its approvers (`approver_roles`, from a dispatch rule) is
  asked from the first level.
- Four-eyes: neither the person who asked nor the owner of the service account that asked.
- Superusers pass scope and level (documented superuser policy) but never four-eyes.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q

from approvals.models import ApprovalRequest, EscalationLevel
from core.errors import TransitionRefused
from governance.permissions import APPROVE, CONTAIN, perm


def decide_permissions(kind: str) -> tuple[str, ...]:
    if kind in ApprovalRequest.CONTAINMENT_KINDS:
        return (APPROVE, CONTAIN)
    return (APPROVE,)


def in_scope(user: AbstractBaseUser, req: ApprovalRequest) -> bool:
    return any(user.has_perm(perm(codename), req.workflow) for codename in decide_permissions(req.kind))


def asked_by(user: AbstractBaseUser, req: ApprovalRequest) -> bool:
    """Four-eyes: the requester, or the owner (then or now) of the service account that asked."""
    owners = {req.requested_by_id, req.on_behalf_of_id}
    if req.requested_by_service_id is not None:
        owners.add(req.requested_by_service.owner_id)
    return user.pk in owners


def named_by_level(user: AbstractBaseUser, req: ApprovalRequest) -> bool:
    if user.is_superuser:
        return True
    if req.approver_roles and user.groups.filter(name__in=req.approver_roles).exists():
        return True  # a role the request needs among its approvers is asked from the first level
    levels = EscalationLevel.objects.filter(policy_id=req.policy_id, position__lte=req.level)
    start = levels.filter(replaces_previous=True).order_by("-position").values_list("position", flat=True).first()
    return levels.filter(position__gte=start or 0).filter(Q(groups__user=user) | Q(people=user)).exists()


def scope_refusal(actor: Any, req: ApprovalRequest) -> TransitionRefused | None:
    """Why `actor` may not decide anything of this workflow, or None."""
    if not isinstance(actor, AbstractBaseUser) or not actor.is_active:
        return TransitionRefused("forbidden", "Only a signed-in person can decide approval requests.")
    if not in_scope(actor, req):
        return TransitionRefused("forbidden", f"You may not decide requests of {req.workflow.slug}.")
    return None


def decider_refusal(actor: AbstractBaseUser, req: ApprovalRequest) -> TransitionRefused | None:
    """Why `actor`, in scope, may not decide this request at its current level, or None."""
    if asked_by(actor, req):
        return TransitionRefused(
            "four_eyes", "You asked for this (or own the service account that did); someone else must decide it.")
    if not named_by_level(actor, req):
        return TransitionRefused(
            "forbidden", "This request has not been escalated to you; the approvers of its current level decide it.")
    return None


def refusal(actor: Any, req: ApprovalRequest) -> TransitionRefused | None:
    """Why `actor` may not decide `req` right now (ignoring its state), or None if they may."""
    return scope_refusal(actor, req) or decider_refusal(actor, req)

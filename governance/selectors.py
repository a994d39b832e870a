"""Reads the pages and the API need, with guardian scope applied in one place."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet
from guardian.shortcuts import get_objects_for_user

from governance.models import AuditEvent, ContainmentAssignment, ServiceAccount, Workflow
from governance.permissions import VIEW, Role, perm


def has_role(user: AbstractBaseUser, role: Role) -> bool:
    if not user.is_authenticated:
        return False
    roles = getattr(user, "_ringfence_roles", None)
    if roles is None:
        roles = set(user.groups.values_list("name", flat=True))
        user._ringfence_roles = roles
    return str(role) in roles


def reads_everything(user: AbstractBaseUser) -> bool:
    """Auditors read every workflow; so do superusers (documented superuser policy)."""
    return user.is_active and (user.is_superuser or has_role(user, Role.AUDITOR))


def workflows_with_perm(user: AbstractBaseUser, codename: str) -> QuerySet[Workflow]:
    """Workflows on which the user holds `codename` as an object permission.

    Model-level (global) permissions never widen scope: accept_global_perms=False.
    """
    if not user.is_authenticated or not user.is_active:
        return Workflow.objects.none()
    if user.is_superuser:
        return Workflow.objects.all()
    return get_objects_for_user(
        user, perm(codename), klass=Workflow, accept_global_perms=False, with_superuser=False
    )


def workflows_visible_to(user: AbstractBaseUser) -> QuerySet[Workflow]:
    if reads_everything(user):
        return Workflow.objects.all()
    return workflows_with_perm(user, VIEW)


def workflows_visible_to_service(account: ServiceAccount) -> QuerySet[Workflow]:
    if not account.active:
        return Workflow.objects.none()
    return account.workflows.all()


def containment_for(workflow: Workflow) -> QuerySet[ContainmentAssignment]:
    return workflow.containment.select_related("user").order_by("duty", "position", "user__username")


def audit_events_for(workflow: Workflow, limit: int = 20) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.filter(workflow_slug=workflow.slug).order_by("-seq")[:limit]


def audit_events_visible_to(user: AbstractBaseUser) -> QuerySet[AuditEvent]:
    if reads_everything(user):
        return AuditEvent.objects.all()
    slugs = workflows_visible_to(user).values_list("slug", flat=True)
    return AuditEvent.objects.filter(workflow_slug__in=slugs)

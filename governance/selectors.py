"""Reads the pages and the API need, with guardian scope applied in one place."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Prefetch, Q, QuerySet
from guardian.shortcuts import get_objects_for_user

from audit.models import AuditEvent
from governance.models import (
    ApiToken,
    ContainmentAssignment,
    ServiceAccount,
    Workflow,
    WorkflowUserObjectPermission,
)
from governance.permissions import MANAGE_ROLLOUTS, VIEW, Role, perm


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


def administers(user: AbstractBaseUser) -> bool:
    """Administrators set up every workflow (each governance service lets them), so they see every
    workflow too, the ones they created included; the role gives it, never a model permission."""
    return user.is_authenticated and user.is_active and (user.is_superuser or has_role(user, Role.ADMINISTRATOR))


def workflows_visible_to(user: AbstractBaseUser) -> QuerySet[Workflow]:
    if reads_everything(user) or administers(user):
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


def may_set_up(user: AbstractBaseUser, workflow: Workflow) -> bool:
    """Who the setup services let change a workflow's actions, rules, policies and containment
    owners: administrators, and release managers (manage_rollouts) of that workflow."""
    if administers(user):
        return True
    return user.is_authenticated and user.is_active and user.has_perm(perm(MANAGE_ROLLOUTS), workflow)


def may_create_workflows(user: AbstractBaseUser) -> bool:
    return administers(user) or (user.is_active and has_role(user, Role.RELEASE_MANAGER))


@dataclass(frozen=True)
class DutyOwners:
    duty: str
    label: str
    primary: ContainmentAssignment | None
    backups: list[ContainmentAssignment]


def owners_by_duty(workflow: Workflow) -> list[DutyOwners]:
    """Every containment duty, in the order of ContainmentAssignment.Duty, with its owners (or none)."""
    assignments = list(containment_for(workflow))
    rows = []
    for duty in ContainmentAssignment.Duty:
        mine = [a for a in assignments if a.duty == duty]
        primary = next((a for a in mine if a.position == ContainmentAssignment.Position.PRIMARY), None)
        rows.append(DutyOwners(duty.value, duty.label, primary, [a for a in mine if a is not primary]))
    return rows


def containment_owners_of(workflow_ids: Iterable[int]) -> dict[int, list[tuple[str, list[str]]]]:
    """For each workflow, its containment owners and their duties, in one query:
    {workflow id: [("olivia", ["every duty"]), ("oscar", ["pause (backup)", "rollback"])]}."""
    held: dict[int, dict[str, dict[str, set[str]]]] = {}
    for a in (ContainmentAssignment.objects.filter(workflow_id__in=set(workflow_ids)).select_related("user")
              .order_by("user__username")):
        held.setdefault(a.workflow_id, {}).setdefault(a.user.get_username(), {}).setdefault(a.position, set()).add(
            a.duty)
    every = list(ContainmentAssignment.Duty)
    owners: dict[int, list[tuple[str, list[str]]]] = {}
    for workflow_id, people in held.items():
        for username, positions in people.items():
            duties = []
            for position, suffix in ((ContainmentAssignment.Position.PRIMARY, ""),
                                     (ContainmentAssignment.Position.BACKUP, " (backup)")):
                mine = positions.get(position, set())
                if len(mine) == len(every):
                    duties.append(f"every duty{suffix}")
                else:
                    duties += [f"{duty.label.lower()}{suffix}" for duty in every if duty in mine]
            owners.setdefault(workflow_id, []).append((username, duties))
    return owners


def scope_of(workflow: Workflow) -> list[tuple[AbstractBaseUser, list[str]]]:
    """The people holding object permissions on the workflow, with the codenames they hold."""
    held: dict[int, tuple[AbstractBaseUser, list[str]]] = {}
    rows = (WorkflowUserObjectPermission.objects.filter(content_object=workflow)
            .select_related("user", "permission").order_by("user__username", "permission__codename"))
    for row in rows:
        held.setdefault(row.user_id, (row.user, []))[1].append(row.permission.codename)
    return list(held.values())


def scope_held(workflow: Workflow, user: AbstractBaseUser) -> set[str]:
    return set(WorkflowUserObjectPermission.objects.filter(content_object=workflow, user=user)
               .values_list("permission__codename", flat=True))


def service_accounts_of(workflow: Workflow) -> QuerySet[ServiceAccount]:
    return (workflow.service_accounts.select_related("owner")
            .prefetch_related(Prefetch("tokens", queryset=ApiToken.objects.order_by("-created_at"))))


def people_and_roles(search: str = "", limit: int = 100) -> list[tuple[AbstractBaseUser, list[str]]]:
    """People (active first, then by username) with the roles they hold; `search` matches the
    username, name or email."""
    users = get_user_model().objects.order_by("-is_active", "username").prefetch_related("groups")
    if search:
        users = users.filter(Q(username__icontains=search) | Q(first_name__icontains=search)
                             | Q(last_name__icontains=search) | Q(email__icontains=search))
    roles = {str(role) for role in Role}
    return [(user, sorted(g.name for g in user.groups.all() if g.name in roles)) for user in users[:limit]]

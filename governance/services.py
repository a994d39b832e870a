"""Governance transitions: one function each; lock, check, change, audit (last), on_commit.

Audit actions (never renamed or reused):
    workflow.created          create_workflow
    workflow.updated          update_workflow (only when something changed)
    workflow.paused           pause_workflow (the kill switch)
    workflow.resumed          resume_workflow
    workflow.action_defined   define_action (declared or changed)
    workflow.action_removed   remove_action
    containment.assigned      assign_containment
    containment.removed       remove_containment
    scope.granted             grant_scope
    scope.revoked             revoke_scope
    role.granted              set_role (member)
    role.revoked              set_role (not a member)
    user.flags_changed        set_user_flags (active, staff, superuser)
    user.roles_changed        set_user_groups
    service_account.created   create_service_account
    service_account.updated   update_service_account
    token.issued              issue_token
    token.revoked             revoke_token
    token.rotated             rotate_token (a new token; the old one ends after the overlap)
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, Group
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from guardian.shortcuts import assign_perm, remove_perm

from audit import log as audit
from core import clock
from core.errors import TransitionRefused, require
from governance.models import (
    TOKEN_PREFIX_LENGTH,
    ApiToken,
    ContainmentAssignment,
    GovernedAction,
    ServiceAccount,
    Workflow,
)
from governance.permissions import CONTAIN, MANAGE_ROLLOUTS, SCOPED_PERMISSIONS, VIEW, Role, perm

# Every audit action this module writes (the module docstring says which function writes which).
AUDIT_ACTIONS = (
    "workflow.created", "workflow.updated", "workflow.paused", "workflow.resumed", "workflow.action_defined",
    "workflow.action_removed", "containment.assigned", "containment.removed", "scope.granted", "scope.revoked",
    "role.granted", "role.revoked", "user.flags_changed", "user.roles_changed", "service_account.created",
    "service_account.updated", "token.issued", "token.revoked", "token.rotated",
)

# What a kill switch reaches beyond the workflow row: apps register a call made inside
# pause_workflow / resume_workflow's transaction with (workflow, actor, now), e.g. approvals holds
# the workflow's pending requests and gives them their time back (AppConfig.ready).
KillSwitchHook = Callable[[Workflow, Any, datetime], Any]
_on_pause: list[KillSwitchHook] = []
_on_resume: list[KillSwitchHook] = []


def on_pause(hook: KillSwitchHook) -> None:
    if hook not in _on_pause:
        _on_pause.append(hook)


def on_resume(hook: KillSwitchHook) -> None:
    if hook not in _on_resume:
        _on_resume.append(hook)


WORKFLOW_FIELDS = (
    "name", "description", "environment", "owning_team", "autonomy_tier", "off_hours_tier",
    "timezone", "business_days", "business_start", "business_end", "holidays",
)


def is_administrator(user: AbstractBaseUser) -> bool:
    return bool(user.is_superuser or user.groups.filter(name=Role.ADMINISTRATOR).exists())


def _lock_workflow(workflow_id: int) -> Workflow:
    try:
        return Workflow.objects.select_for_update().get(pk=workflow_id)
    except Workflow.DoesNotExist:
        raise TransitionRefused("not_found", "This workflow does not exist.") from None


def _validated(instance: Any, exclude: list[str] | None = None) -> None:
    try:
        instance.full_clean(exclude=exclude)
    except ValidationError as exc:
        field, messages = next(iter(exc.message_dict.items()))
        raise TransitionRefused("invalid", f"{field}: {' '.join(messages)}", field=field) from None


@transaction.atomic
def create_workflow(*, actor: AbstractBaseUser, slug: str, name: str, **fields: Any) -> Workflow:
    """Create a workflow. Administrators and release managers only. Audit: `workflow.created`."""
    require(is_administrator(actor) or actor.groups.filter(name=Role.RELEASE_MANAGER).exists(), "forbidden",
            "Only administrators and release managers create workflows.")
    unknown = set(fields) - set(WORKFLOW_FIELDS)
    require(not unknown, "invalid", f"Unknown workflow fields: {', '.join(sorted(unknown))}.")
    workflow = Workflow(slug=slug, name=name, **fields)
    _validated(workflow)
    try:
        with transaction.atomic():
            workflow.save()
    except IntegrityError:
        raise TransitionRefused("conflict", f"A workflow {slug!r} was created at the same moment.",
                                field="slug") from None
    if not is_administrator(actor):
        for codename in (VIEW, MANAGE_ROLLOUTS):
            assign_perm(perm(codename), actor, workflow)
    audit.record(actor, "workflow.created", workflow,
                 data={field: getattr(workflow, field) for field in ("slug", *WORKFLOW_FIELDS)})
    return workflow


@transaction.atomic
def update_workflow(workflow_id: int, *, actor: AbstractBaseUser, **changes: Any) -> Workflow:
    """Change a workflow's settings. Audit: `workflow.updated` with old and new values."""
    workflow = _lock_workflow(workflow_id)
    require(is_administrator(actor) or actor.has_perm(perm(MANAGE_ROLLOUTS), workflow), "forbidden",
            "You may not edit this workflow.")
    unknown = set(changes) - set(WORKFLOW_FIELDS)
    require(not unknown, "invalid", f"Unknown workflow fields: {', '.join(sorted(unknown))}.")
    before = {field: getattr(workflow, field) for field in changes}
    for field, value in changes.items():
        setattr(workflow, field, value)
    _validated(workflow)  # also converts the values to their field types
    after = {field: getattr(workflow, field) for field in changes}
    diff = {f: {"from": before[f], "to": after[f]} for f in changes if before[f] != after[f]}
    if not diff:
        return workflow
    workflow.save(update_fields=[*diff, "updated_at"])
    audit.record(actor, "workflow.updated", workflow, data={"changes": diff})
    return workflow


def _may_pause(actor: Any, workflow: Workflow) -> bool:
    if isinstance(actor, ServiceAccount):
        return actor.active and actor.workflows.filter(pk=workflow.pk).exists()
    if not actor.is_active:
        return False
    return actor.has_perm(perm(CONTAIN), workflow) or workflow.containment.filter(
        user=actor, duty=ContainmentAssignment.Duty.PAUSE
    ).exists()


@transaction.atomic
def pause_workflow(workflow_id: int, *, actor: Any, reason: str) -> Workflow:
    """Engage the kill switch: every dispatch is denied until resumed, and what the registered
    hooks hold (pending approval requests) waits too. Audit: `workflow.paused`."""
    workflow = _lock_workflow(workflow_id)
    require(_may_pause(actor, workflow), "forbidden", "You may not pause this workflow.")
    reason = (reason or "").strip()
    require(reason, "invalid", "Say why the workflow is paused.", field="reason")
    require(len(reason) <= 2000, "invalid", "Keep the reason under 2,000 characters.", field="reason")
    require(not workflow.paused, "already_paused",
            f"This workflow is already paused ({workflow.paused_reason}).")
    workflow.paused, workflow.paused_reason, workflow.paused_at = True, reason, clock.now()
    workflow.paused_by = actor if isinstance(actor, AbstractBaseUser) else None
    workflow.save(update_fields=["paused", "paused_reason", "paused_at", "paused_by", "updated_at"])
    audit.record(actor, "workflow.paused", workflow, reason=reason)
    for hook in _on_pause:
        hook(workflow, actor, workflow.paused_at)
    return workflow


@transaction.atomic
def resume_workflow(workflow_id: int, *, actor: AbstractBaseUser, reason: str = "") -> Workflow:
    """Release the kill switch. People with the containment permission only. Audit: `workflow.resumed`."""
    workflow = _lock_workflow(workflow_id)
    require(isinstance(actor, AbstractBaseUser) and _may_pause(actor, workflow), "forbidden",
            "You may not resume this workflow.")
    require(workflow.paused, "not_paused", "This workflow is not paused.")
    workflow.paused, workflow.paused_reason, workflow.paused_at, workflow.paused_by = False, "", None, None
    workflow.save(update_fields=["paused", "paused_reason", "paused_at", "paused_by", "updated_at"])
    audit.record(actor, "workflow.resumed", workflow, reason=reason)
    now = clock.now()
    for hook in _on_resume:
        hook(workflow, actor, now)
    return workflow


@transaction.atomic
def assign_containment(workflow_id: int, *, actor: AbstractBaseUser, user: AbstractBaseUser, duty: str,
                       position: str = ContainmentAssignment.Position.PRIMARY) -> ContainmentAssignment:
    """Name an owner of a containment duty; the owner also gets the workflow's contain scope.

    Audit: `containment.assigned`.
    """
    workflow = _lock_workflow(workflow_id)
    require(is_administrator(actor) or actor.has_perm(perm(MANAGE_ROLLOUTS), workflow), "forbidden",
            "You may not assign containment owners of this workflow.")
    require(duty in ContainmentAssignment.Duty.values, "invalid", f"Unknown duty {duty!r}.", field="duty")
    require(position in ContainmentAssignment.Position.values, "invalid", f"Unknown position {position!r}.",
            field="position")
    require(user.is_active, "invalid", f"{user.get_username()} is not an active user.", field="user")
    existing = workflow.containment.filter(duty=duty)
    require(not existing.filter(user=user).exists(), "conflict",
            f"{user.get_username()} already holds the {duty} duty of {workflow.slug}.")
    if position == ContainmentAssignment.Position.PRIMARY:
        current = existing.filter(position=position).select_related("user").first()
        require(current is None, "conflict",
                f"{current.user.get_username() if current else ''} is already the primary {duty} owner; "
                "remove them first or assign a backup.")
    try:
        with transaction.atomic():
            assignment = ContainmentAssignment.objects.create(workflow=workflow, user=user, duty=duty,
                                                              position=position)
    except IntegrityError:
        raise TransitionRefused("conflict",
                                "Someone assigned this duty at the same moment; reload and retry.") from None
    for codename in (VIEW, CONTAIN):
        assign_perm(perm(codename), user, workflow)
    audit.record(actor, "containment.assigned", assignment, workflow=workflow,
                 data={"user": user.get_username(), "duty": duty, "position": position})
    return assignment


@transaction.atomic
def remove_containment(assignment_id: int, *, actor: AbstractBaseUser) -> None:
    """Remove an owner from a duty. Audit: `containment.removed`."""
    workflow_id = ContainmentAssignment.objects.filter(pk=assignment_id).values_list("workflow_id", flat=True).first()
    require(workflow_id is not None, "not_found", "This assignment no longer exists.")
    workflow = _lock_workflow(workflow_id)
    # Read again under the workflow lock: a concurrent removal must not be audited twice.
    assignment = ContainmentAssignment.objects.select_related("user").filter(pk=assignment_id).first()
    require(assignment is not None, "not_found", "This assignment no longer exists.")
    require(is_administrator(actor) or actor.has_perm(perm(MANAGE_ROLLOUTS), workflow), "forbidden",
            "You may not change containment owners of this workflow.")
    data = {"user": assignment.user.get_username(), "duty": assignment.duty, "position": assignment.position}
    subject = (assignment._meta.label_lower, str(assignment.pk))
    assignment.delete()
    audit.record(actor, "containment.removed", subject, workflow=workflow, data=data)


@transaction.atomic
def grant_scope(workflow_id: int, *, actor: AbstractBaseUser, user: AbstractBaseUser,
                permissions: list[str]) -> list[str]:
    """Give a person object permissions on one workflow. Administrators only. Audit: `scope.granted`."""
    workflow = _lock_workflow(workflow_id)
    require(is_administrator(actor), "forbidden", "Only administrators grant scope.")
    unknown = set(permissions) - set(SCOPED_PERMISSIONS)
    require(permissions and not unknown, "invalid",
            f"Choose permissions among {', '.join(SCOPED_PERMISSIONS)}.", field="permissions")
    granted = sorted(set(permissions))
    for codename in granted:
        assign_perm(perm(codename), user, workflow)
    audit.record(actor, "scope.granted", workflow, data={"user": user.get_username(), "permissions": granted})
    return granted


@transaction.atomic
def revoke_scope(workflow_id: int, *, actor: AbstractBaseUser, user: AbstractBaseUser,
                 permissions: list[str] | None = None) -> list[str]:
    """Take object permissions away (all of them by default); effective on the next request.

    Audit: `scope.revoked`.
    """
    workflow = _lock_workflow(workflow_id)
    require(is_administrator(actor), "forbidden", "Only administrators revoke scope.")
    require(permissions is None or len(permissions) > 0, "invalid", "Choose at least one permission to revoke.",
            field="permissions")
    revoked = sorted(set(SCOPED_PERMISSIONS if permissions is None else permissions))
    require(not set(revoked) - set(SCOPED_PERMISSIONS), "invalid", "Unknown permission.", field="permissions")
    for codename in revoked:
        remove_perm(perm(codename), user, workflow)
    audit.record(actor, "scope.revoked", workflow, data={"user": user.get_username(), "permissions": revoked})
    return revoked


@transaction.atomic
def set_role(*, actor: AbstractBaseUser, user: AbstractBaseUser, role: Role, member: bool = True) -> None:
    """Add a person to a role group or take them out. Audit: `role.granted` / `role.revoked`."""
    require(is_administrator(actor), "forbidden", "Only administrators change roles.")
    require(str(role) in set(Role), "invalid", f"Unknown role {role!r}.", field="role")
    group = Group.objects.get(name=role)
    (user.groups.add if member else user.groups.remove)(group)
    audit.record(actor, "role.granted" if member else "role.revoked", user, data={"role": str(role)})


USER_FLAGS = ("is_active", "is_staff", "is_superuser")


def _lock_user(user_id: int) -> AbstractBaseUser:
    user = get_user_model().objects.select_for_update().filter(pk=user_id).first()
    require(user is not None, "not_found", "This user does not exist.")
    return user


@transaction.atomic
def set_user_flags(user_id: int, *, actor: AbstractBaseUser, is_active: bool | None = None,
                   is_staff: bool | None = None, is_superuser: bool | None = None) -> AbstractBaseUser:
    """Change a person's active / staff / superuser flags; only the flags given, only if they differ.

    Administrators only; only a superuser grants or removes superuser status or changes a
    superuser's account; nobody removes their own superuser status or deactivates themselves.
    Audit: `user.flags_changed` with from/to of each changed flag.
    """
    require(is_administrator(actor), "forbidden", "Only administrators change users' flags.")
    user = _lock_user(user_id)
    wanted = {"is_active": is_active, "is_staff": is_staff, "is_superuser": is_superuser}
    diff = {flag: {"from": getattr(user, flag), "to": bool(value)}
            for flag, value in wanted.items() if value is not None and bool(value) != getattr(user, flag)}
    if not diff:
        return user
    require(actor.is_superuser or ("is_superuser" not in diff and not user.is_superuser), "forbidden",
            "Only a superuser grants or removes superuser status or changes a superuser's account.")
    itself = user.pk == actor.pk
    require(not (itself and "is_superuser" in diff), "forbidden", "You cannot remove your own superuser status.")
    require(not (itself and "is_active" in diff), "forbidden", "You cannot deactivate yourself.")
    for flag, change in diff.items():
        setattr(user, flag, change["to"])
    user.save(update_fields=list(diff))
    audit.record(actor, "user.flags_changed", user, data={"user": user.get_username(), "changes": diff})
    return user


@transaction.atomic
def set_user_groups(user_id: int, *, actor: AbstractBaseUser, groups: list[str]) -> AbstractBaseUser:
    """Make a person's role groups exactly `groups` (role names); other groups are left alone.

    Administrators only. Audit: `user.roles_changed` with the roles added and removed.
    """
    require(is_administrator(actor), "forbidden", "Only administrators change roles.")
    roles = {str(role) for role in Role}
    wanted = {str(name) for name in groups}
    unknown = wanted - roles
    require(not unknown, "invalid", f"Unknown roles: {', '.join(sorted(unknown))}.", field="groups")
    user = _lock_user(user_id)
    held = set(user.groups.filter(name__in=roles).values_list("name", flat=True))
    added, removed = sorted(wanted - held), sorted(held - wanted)
    if not added and not removed:
        return user
    if added:
        user.groups.add(*Group.objects.filter(name__in=added))
    if removed:
        user.groups.remove(*Group.objects.filter(name__in=removed))
    if hasattr(user, "_ringfence_roles"):
        del user._ringfence_roles
    audit.record(actor, "user.roles_changed", user,
                 data={"user": user.get_username(), "added": added, "removed": removed})
    return user


@transaction.atomic
def create_service_account(*, actor: AbstractBaseUser, name: str, owner: AbstractBaseUser,
                           workflows: list[Workflow], description: str = "") -> ServiceAccount:
    """A service account for an agent or CI job, scoped to workflows. Audit: `service_account.created`."""
    require(is_administrator(actor), "forbidden", "Only administrators create service accounts.")
    account = ServiceAccount(name=name, owner=owner, description=description)
    _validated(account)
    account.save()
    account.workflows.set(workflows)
    audit.record(actor, "service_account.created", account,
                 data={"name": name, "owner": owner.get_username(), "workflows": sorted(w.slug for w in workflows)})
    return account


@transaction.atomic
def update_service_account(account_id: int, *, actor: AbstractBaseUser, owner: AbstractBaseUser | None = None,
                           workflows: list[Workflow] | None = None, active: bool | None = None,
                           description: str | None = None, permissions: list[str] | None = None) -> ServiceAccount:
    """Change a service account's owner (whom four-eyes checks against), workflow scope, active flag,
    description or permissions (`config`: may plan and apply configuration); only what is given.
    Administrators only.

    Audit: `service_account.updated` with from/to of each changed field (owner as username,
    workflows as sorted slugs).
    """
    require(is_administrator(actor), "forbidden", "Only administrators change service accounts.")
    account = ServiceAccount.objects.select_for_update().select_related("owner").filter(pk=account_id).first()
    require(account is not None, "not_found", "This service account does not exist.")
    diff: dict[str, dict[str, Any]] = {}
    if owner is not None and owner.pk != account.owner_id:
        require(owner.is_active, "invalid", f"{owner.get_username()} is not an active user.", field="owner")
        diff["owner"] = {"from": account.owner.get_username(), "to": owner.get_username()}
        account.owner = owner
    if active is not None and bool(active) != account.active:
        diff["active"] = {"from": account.active, "to": bool(active)}
        account.active = bool(active)
    if description is not None and description != account.description:
        diff["description"] = {"from": account.description, "to": description}
        account.description = description
    if permissions is not None:
        unknown = sorted(set(permissions) - set(ServiceAccount.PERMISSIONS))
        require(not unknown, "invalid", f"Unknown permission {', '.join(unknown)}; an account may hold "
                f"{', '.join(ServiceAccount.PERMISSIONS)}.", field="permissions")
        if sorted(set(permissions)) != sorted(account.permissions or []):
            diff["permissions"] = {"from": sorted(account.permissions or []), "to": sorted(set(permissions))}
            account.permissions = sorted(set(permissions))
    _validated(account, exclude=["name"])
    new_workflows = None
    if workflows is not None:
        new_workflows = list(workflows)
        before = sorted(account.workflows.values_list("slug", flat=True))
        after = sorted({w.slug for w in new_workflows})
        if before != after:
            diff["workflows"] = {"from": before, "to": after}
    if not diff:
        return account
    fields = [field for field in ("owner", "active", "description", "permissions") if field in diff]
    if fields:
        account.save(update_fields=fields)
    if "workflows" in diff:
        account.workflows.set(new_workflows)
    audit.record(actor, "service_account.updated", account, data={"name": account.name, "changes": diff})
    return account


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    raw: str  # shown once; never stored


@transaction.atomic
def issue_token(service_account_id: int, *, actor: AbstractBaseUser, label: str = "") -> IssuedToken:
    """Create a 256-bit bearer token; only its prefix and SHA-256 digest are stored.

    Audit: `token.issued` (prefix only).
    """
    require(is_administrator(actor), "forbidden", "Only administrators issue tokens.")
    account = ServiceAccount.objects.select_for_update().filter(pk=service_account_id).first()
    require(account is not None, "not_found", "This service account does not exist.")
    require(account.active, "invalid", "This service account is disabled.")
    token, raw = _new_token(account, actor, label)
    audit.record(actor, "token.issued", token,
                 data={"service_account": account.name, "prefix": token.prefix, "label": label[:100],
                       "expires_at": token.expires_at})
    return IssuedToken(token=token, raw=raw)


def _new_token(account: ServiceAccount, actor: AbstractBaseUser, label: str) -> tuple[ApiToken, str]:
    raw = "rf_" + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        service_account=account, label=label[:100], prefix=raw[:TOKEN_PREFIX_LENGTH], digest=ApiToken.digest_of(raw),
        created_by=actor, expires_at=clock.now() + timedelta(days=settings.API_TOKEN_MAX_DAYS),
    )
    return token, raw


@transaction.atomic
def rotate_token(token_id: int, *, actor: AbstractBaseUser, overlap: timedelta | None = None) -> IssuedToken:
    """Issue the token's successor (same account and label) and end the old one after `overlap`
    (API_TOKEN_ROTATION_OVERLAP_HOURS by default), so the agent can switch without a gap.

    Refuses: not an administrator (403), a revoked, expired or already rotated token (409), an
    overlap that is negative or longer than the token has left (422). Audit: `token.rotated`.
    """
    require(is_administrator(actor), "forbidden", "Only administrators rotate tokens.")
    old = ApiToken.objects.select_for_update().select_related("service_account").filter(pk=token_id).first()
    require(old is not None, "not_found", "This token does not exist.")
    now = clock.now()
    require(old.revoked_at is None, "conflict", "This token is revoked: issue a new one instead.")
    require(old.expires_at > now, "conflict", "This token has expired: issue a new one instead.")
    require(old.replaced_by_id is None, "conflict", "This token was already rotated.")
    require(old.service_account.active, "invalid", "This service account is disabled.")
    overlap = timedelta(hours=settings.API_TOKEN_ROTATION_OVERLAP_HOURS) if overlap is None else overlap
    require(overlap >= timedelta(0), "invalid", "The overlap cannot be negative.", field="overlap")
    new, raw = _new_token(old.service_account, actor, old.label)
    old.expires_at, old.replaced_by = min(old.expires_at, now + overlap), new
    old.save(update_fields=["expires_at", "replaced_by"])
    audit.record(actor, "token.rotated", old,
                 data={"service_account": old.service_account.name, "prefix": old.prefix, "new_prefix": new.prefix,
                       "old_expires_at": old.expires_at, "new_expires_at": new.expires_at})
    return IssuedToken(token=new, raw=raw)


@transaction.atomic
def revoke_token(token_id: int, *, actor: AbstractBaseUser, reason: str = "") -> ApiToken:
    """Revoke a token; the next call with it is refused. Audit: `token.revoked`."""
    require(is_administrator(actor), "forbidden", "Only administrators revoke tokens.")
    token = ApiToken.objects.select_for_update().select_related("service_account").filter(pk=token_id).first()
    require(token is not None, "not_found", "This token does not exist.")
    require(token.revoked_at is None, "conflict", "This token is already revoked.")
    token.revoked_at, token.revoked_by = clock.now(), actor
    token.save(update_fields=["revoked_at", "revoked_by"])
    audit.record(actor, "token.revoked", token,
                 data={"service_account": token.service_account.name, "prefix": token.prefix}, reason=reason)
    return token


@transaction.atomic
def define_action(workflow_id: int, *, actor: AbstractBaseUser, name: str, risk: str, quorum: int = 1,
                  description: str = "") -> GovernedAction:
    """Declare (or change) an action that needs approval. Audit: `workflow.action_defined`."""
    workflow = _lock_workflow(workflow_id)
    require(is_administrator(actor) or actor.has_perm(perm(MANAGE_ROLLOUTS), workflow), "forbidden",
            "You may not change the governed actions of this workflow.")
    action = (GovernedAction.objects.filter(workflow=workflow, name=name).first()
              or GovernedAction(workflow=workflow, name=name))
    action.risk, action.quorum, action.description = risk, quorum, description
    _validated(action)
    action.save()
    audit.record(actor, "workflow.action_defined", action, workflow=workflow,
                 data={"name": name, "risk": risk, "quorum": quorum})
    return action


LAST_USED_RESOLUTION = timedelta(minutes=1)


class TokenRefused(Exception):
    """A token that exists but no longer opens the API: revoked, expired, or its account disabled."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


def authenticate_token(raw: str) -> ApiToken | None:
    """The usable token for a raw bearer value, or None when no token has that value; raises
    TokenRefused naming why a known token is refused. Its last use is recorded, to the minute, on
    success only."""
    if not raw or not raw.startswith("rf_") or len(raw) > 100:
        return None
    digest = ApiToken.digest_of(raw)
    # The owner comes along: dispatch's rules read it (agent.owner) on every call.
    tokens = ApiToken.objects.filter(prefix=raw[:TOKEN_PREFIX_LENGTH])
    for token in tokens.select_related("service_account__owner"):
        if hmac.compare_digest(token.digest, digest):
            now = clock.now()
            if (refusal := token.refusal_at(now)) is not None:
                raise TokenRefused(*refusal)
            # Recorded to the minute: a write and a commit on every call would cost each API call more
            # than the rest of its checks.
            if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
                ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
                token.last_used_at = now
            return token
    return None


@transaction.atomic
def remove_action(action_id: int, *, actor: AbstractBaseUser) -> None:
    """Stop governing an action: its dispatches are then denied as unknown. Its rules go with it;
    requests already asked keep their record. Audit: `workflow.action_removed` with what it was."""
    workflow_id = GovernedAction.objects.filter(pk=action_id).values_list("workflow_id", flat=True).first()
    require(workflow_id is not None, "not_found", "This governed action does not exist.")
    workflow = _lock_workflow(workflow_id)
    require(is_administrator(actor) or actor.has_perm(perm(MANAGE_ROLLOUTS), workflow), "forbidden",
            "You may not change the governed actions of this workflow.")
    action = GovernedAction.objects.filter(pk=action_id).first()
    require(action is not None, "not_found", "This governed action no longer exists.")
    data = {"name": action.name, "risk": action.risk, "quorum": action.quorum,
            "rules": [rule.condition for rule in action.rules.order_by("shadow", "position")]}
    subject = (action._meta.label_lower, str(action.pk))
    action.delete()
    audit.record(actor, "workflow.action_removed", subject, workflow=workflow, data=data)

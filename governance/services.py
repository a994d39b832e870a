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
    login.locked_out          record_login_lockout (failed sign-ins reached the limit: an account or address waits)
    login.unlocked            unlock_login (an administrator lifted a sign-in lockout early)
    identity.mapping_defined  define_group_mapping (an identity-provider group's roles and scope)
    identity.mapping_removed  remove_group_mapping
    user.created              sign_in_with_identity (first sign-in), issue_breakglass_link (the emergency superuser)
    user.identity_linked      sign_in_with_identity (an existing account's first sign-in through the provider)
    user.breakglass_issued    issue_breakglass_link
    user.breakglass_used      use_breakglass_link
    (sign_in_with_identity also writes role.*, scope.* and user.flags_changed as the mappings change them)
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from axes.helpers import get_cool_off, get_failure_limit
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, Group
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from guardian.shortcuts import assign_perm, remove_perm

from audit import log as audit
from core import clock
from core.errors import TransitionRefused, require
from governance import identity
from governance.models import (
    TOKEN_PREFIX_LENGTH,
    ApiToken,
    BreakGlassLink,
    ContainmentAssignment,
    GovernedAction,
    GroupMapping,
    IdentityGrant,
    IdentityLink,
    ServiceAccount,
    Workflow,
    WorkflowUserObjectPermission,
)
from governance.permissions import CONTAIN, MANAGE_ROLLOUTS, SCOPED_PERMISSIONS, VIEW, Role, perm

# Every audit action this module writes (the module docstring says which function writes which).
AUDIT_ACTIONS = (
    "workflow.created", "workflow.updated", "workflow.paused", "workflow.resumed", "workflow.action_defined",
    "workflow.action_removed", "containment.assigned", "containment.removed", "scope.granted", "scope.revoked",
    "role.granted", "role.revoked", "user.flags_changed", "user.roles_changed", "service_account.created",
    "service_account.updated", "token.issued", "token.revoked", "token.rotated",
    "login.locked_out", "login.unlocked",
    "identity.mapping_defined", "identity.mapping_removed", "user.created", "user.identity_linked",
    "user.breakglass_issued", "user.breakglass_used",
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


def _kill_switch_refusal(actor: Any, workflow: Workflow, doing: str) -> str:
    """Why `actor` may not pull or release the kill switch, naming what they lack."""
    if isinstance(actor, ServiceAccount):
        if doing == "Resuming":
            return (f"A service account may pause {workflow.slug} but never resume it: resuming needs a person with "
                    "the permission to take containment actions on it, or its pause duty.")
        if not actor.active:
            return f"The service account {actor.name} is deactivated."
        return f"The service account {actor.name} is not scoped to {workflow.slug}."
    if not actor.is_active:
        return "Your account is deactivated."
    return (f"{doing} {workflow.slug} needs the permission to take containment actions on it, or its pause duty; "
            "you have neither.")


@transaction.atomic
def pause_workflow(workflow_id: int, *, actor: Any, reason: str) -> Workflow:
    """Engage the kill switch: every dispatch is denied until resumed, and what the registered
    hooks hold (pending approval requests) waits too. Audit: `workflow.paused`."""
    workflow = _lock_workflow(workflow_id)
    require(_may_pause(actor, workflow), "forbidden", _kill_switch_refusal(actor, workflow, "Pausing"))
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
            _kill_switch_refusal(actor, workflow, "Resuming"))
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


# --- sign-in through the identity provider: group mappings, sign-in, break-glass ------------------

def _mapping_fields(mapping: GroupMapping) -> dict[str, Any]:
    return {"roles": list(mapping.roles), "scope": {slug: list(perms) for slug, perms in mapping.scope.items()}}


@transaction.atomic
def define_group_mapping(*, actor: AbstractBaseUser, group: str, roles: list[str],
                         scope: dict[str, list[str]]) -> GroupMapping:
    """Say what an identity-provider group gives its members: roles, and object permissions (codenames) per
    workflow slug. Members get it, or lose what it gave, at their next sign-in. Administrators only.

    Audit: `identity.mapping_defined` with the mapping (and what it was), only when something changed.
    """
    require(is_administrator(actor), "forbidden", "Only administrators map identity-provider groups.")
    group = (group or "").strip()
    require(group and len(group) <= 255, "invalid", "Name the group (at most 255 characters).", field="group")
    unknown = sorted(set(roles) - {str(role) for role in Role})
    require(not unknown, "invalid", f"Unknown roles: {', '.join(unknown)}.", field="roles")
    missing = sorted(set(scope) - set(Workflow.objects.filter(slug__in=list(scope)).values_list("slug", flat=True)))
    require(not missing, "invalid", f"No workflow {', '.join(missing)}.", field="scope")
    for slug, codenames in scope.items():
        require(codenames and not set(codenames) - set(SCOPED_PERMISSIONS), "invalid",
                f"Choose the permissions on {slug} among {', '.join(SCOPED_PERMISSIONS)}.", field="scope")
    wanted = {"roles": sorted(set(roles)), "scope": {slug: sorted(set(scope[slug])) for slug in sorted(scope)}}
    mapping = GroupMapping.objects.select_for_update().filter(group=group).first()
    before = None if mapping is None else _mapping_fields(mapping)
    if before == wanted:
        return mapping
    try:
        with transaction.atomic():
            mapping, _ = GroupMapping.objects.update_or_create(group=group, defaults=wanted)
    except IntegrityError:
        raise TransitionRefused("conflict", f"The group {group!r} was mapped at the same moment; retry.") from None
    audit.record(actor, "identity.mapping_defined", mapping, data={"group": group, **wanted, "before": before})
    return mapping


@transaction.atomic
def remove_group_mapping(*, actor: AbstractBaseUser, group: str) -> None:
    """Stop mapping a group: what it gave goes at each member's next sign-in. Administrators only.

    Audit: `identity.mapping_removed` with what the mapping gave.
    """
    require(is_administrator(actor), "forbidden", "Only administrators map identity-provider groups.")
    mapping = GroupMapping.objects.select_for_update().filter(group=group).first()
    require(mapping is not None, "not_found", f"The group {group!r} is not mapped.")
    subject = (mapping._meta.label_lower, str(mapping.pk))
    data = {"group": mapping.group, **_mapping_fields(mapping)}
    mapping.delete()
    audit.record(actor, "identity.mapping_removed", subject, data=data)


@transaction.atomic
def sign_in_with_identity(*, issuer: str, claims: dict[str, Any], groups_claim: str) -> AbstractBaseUser:
    """The person the identity provider vouched for (verified ID token and userinfo `claims`): found by the
    provider's subject, else created (username from `preferred_username` or the email), or an existing account
    of that name linked when the provider verified the same email the account has. Their roles and workflow
    scope then follow their groups through the group mappings; only what a mapping gave is ever taken away.

    Refuses: no subject (invalid), an existing account it may not take over or a deactivated one (forbidden).
    Audit (actor `system:identity-provider`): `user.created`, `user.identity_linked`, `role.granted`,
    `role.revoked`, `scope.granted`, `scope.revoked`, `user.flags_changed` (staff, with an administrator role).
    """
    subject = claims.get("sub")
    require(isinstance(subject, str) and 0 < len(subject) <= 255, "invalid",
            "The identity provider's answer names no subject.")
    email, verified = identity.email_from(claims), identity.email_verified(claims)
    verified = verified and bool(email)
    groups = identity.groups_from(claims, groups_claim)
    link = IdentityLink.objects.select_for_update().filter(issuer=issuer, subject=subject).first()
    if link is None:
        link = _first_sign_in(issuer, subject, claims, email, verified)
    user = _lock_user(link.user_id)
    require(user.is_active, "forbidden", "This account is deactivated in Ringfence; ask an administrator.")
    profile = {"email": email or user.email, "first_name": str(claims.get("given_name") or user.first_name)[:150],
               "last_name": str(claims.get("family_name") or user.last_name)[:150]}
    changed = [name for name, value in profile.items() if getattr(user, name) != value]
    for name in changed:
        setattr(user, name, profile[name])
    if changed:
        user.save(update_fields=changed)
    link.email, link.email_verified, link.groups, link.last_signed_in_at = email, verified, groups, clock.now()
    link.save(update_fields=["email", "email_verified", "groups", "last_signed_in_at"])
    _follow_groups(user, link, groups)
    return user


def _first_sign_in(issuer: str, subject: str, claims: dict[str, Any], email: str, verified: bool) -> IdentityLink:
    username = identity.username_from(claims)
    user_model = get_user_model()
    user = user_model.objects.select_for_update().filter(username__iexact=username).first()
    data = {"user": username, "via": "identity_provider", "issuer": issuer, "subject": subject,
            "email": email, "email_verified": verified}
    if user is not None:
        require(not IdentityLink.objects.filter(user=user).exists(), "forbidden",
                f"The Ringfence account {user.get_username()} already signs in as another identity; ask an "
                "administrator.")
        require(verified and user.email and user.email.lower() == email.lower(), "forbidden",
                f"A Ringfence account named {user.get_username()} already exists, and the identity provider did not "
                "verify the email that account has; ask an administrator to link them.")
        action = "user.identity_linked"
    else:
        user = user_model(username=username, email=email)
        user.set_unusable_password()
        action = "user.created"
    try:
        with transaction.atomic():
            if action == "user.created":
                user.save()
            link = IdentityLink.objects.create(user=user, issuer=issuer, subject=subject, email=email,
                                               email_verified=verified)
    except IntegrityError:
        raise TransitionRefused("conflict", "This account was signed in at the same moment elsewhere; sign in "
                                            "again.") from None
    audit.record(identity.IDENTITY_ACTOR, "user.created" if action == "user.created" else "user.identity_linked",
                 user, data=data)
    return link


def _follow_groups(user: AbstractBaseUser, link: IdentityLink, groups: list[str]) -> None:
    """Roles and scope the mappings of `groups` give, and no longer what they gave before; grants made by hand
    (no IdentityGrant row) are neither recorded as the mappings' nor taken away."""
    wanted = identity.grants_for(GroupMapping.objects.all(), groups)
    username, actor = user.get_username(), identity.IDENTITY_ACTOR
    role_names = {str(role) for role in Role}
    held = set(user.groups.filter(name__in=role_names).values_list("name", flat=True))
    given = {g.role: g for g in IdentityGrant.objects.filter(user=user, workflow__isnull=True)}
    for role, giving in sorted(wanted.roles.items()):
        record = given.get(role)
        if role not in held:
            user.groups.add(Group.objects.get(name=role))
            held.add(role)
            audit.record(actor, "role.granted", user, data={"role": role, "user": username, "groups": giving})
        elif record is None:
            continue  # held by hand: the mapping neither records nor will take it
        if record is None or record.groups != giving:
            IdentityGrant.objects.update_or_create(user=user, role=role, workflow=None, defaults={"groups": giving})
    for role, record in sorted(given.items()):
        if role in wanted.roles:
            continue
        if role in held:
            user.groups.remove(Group.objects.get(name=role))
            held.discard(role)
            audit.record(actor, "role.revoked", user, data={"role": role, "user": username, "groups": record.groups})
        record.delete()
    if hasattr(user, "_ringfence_roles"):
        del user._ringfence_roles
    _follow_staff(user, link, wanted, held)

    workflows = {w.slug: w for w in Workflow.objects.filter(slug__in={slug for slug, _ in wanted.permissions})}
    held_perms = set(WorkflowUserObjectPermission.objects.filter(user=user)
                     .values_list("content_object_id", "permission__codename"))
    given_perms = {(g.workflow_id, g.permission): g
                   for g in IdentityGrant.objects.filter(user=user, workflow__isnull=False).select_related("workflow")}
    granted: dict[Workflow, tuple[set[str], set[str]]] = {}
    keep = set()
    for (slug, codename), giving in sorted(wanted.permissions.items()):
        workflow = workflows.get(slug)
        if workflow is None or codename not in SCOPED_PERMISSIONS:
            continue  # a mapping naming a workflow deleted since, or a permission no longer scoped
        key = (workflow.pk, codename)
        keep.add(key)
        if key not in held_perms:
            assign_perm(perm(codename), user, workflow)
            codenames, groups_ = granted.setdefault(workflow, (set(), set()))
            codenames.add(codename)
            groups_.update(giving)
        elif key not in given_perms:
            continue  # held by hand
        if key not in given_perms or given_perms[key].groups != giving:
            IdentityGrant.objects.update_or_create(user=user, workflow=workflow, permission=codename,
                                                   defaults={"groups": giving})
    revoked: dict[Workflow, tuple[set[str], set[str]]] = {}
    for key, record in given_perms.items():
        if key in keep:
            continue
        if key in held_perms:
            remove_perm(perm(record.permission), user, record.workflow)
            codenames, groups_ = revoked.setdefault(record.workflow, (set(), set()))
            codenames.add(record.permission)
            groups_.update(record.groups)
        record.delete()
    for workflow, (codenames, groups_) in sorted(granted.items(), key=lambda item: item[0].slug):
        audit.record(actor, "scope.granted", workflow,
                     data={"user": username, "permissions": sorted(codenames), "groups": sorted(groups_)})
    for workflow, (codenames, groups_) in sorted(revoked.items(), key=lambda item: item[0].slug):
        audit.record(actor, "scope.revoked", workflow,
                     data={"user": username, "permissions": sorted(codenames), "groups": sorted(groups_)})


def _follow_staff(user: AbstractBaseUser, link: IdentityLink, wanted: identity.Grants, held: set[str]) -> None:
    """Administrators use the Django admin, which asks for the staff flag: a mapping's administrator role brings
    it, and takes it back with the role unless the person is still an administrator by hand."""
    giving = wanted.roles.get(str(Role.ADMINISTRATOR))
    if giving and not user.is_staff:
        new, link.staff_granted = True, True
    elif not giving and link.staff_granted:
        link.staff_granted = False
        new = False if str(Role.ADMINISTRATOR) not in held else user.is_staff
    else:
        return
    link.save(update_fields=["staff_granted"])
    if new == user.is_staff:
        return
    change = {"is_staff": {"from": user.is_staff, "to": new}}
    user.is_staff = new
    user.save(update_fields=["is_staff"])
    audit.record(identity.IDENTITY_ACTOR, "user.flags_changed", user,
                 data={"user": user.get_username(), "changes": change, "groups": giving or []})


BREAKGLASS_ACTOR = "system:breakglass"
BREAKGLASS_LINK_LIFETIME = timedelta(minutes=15)


@transaction.atomic
def issue_breakglass_link(*, username: str, reason: str, issued_by: str) -> tuple[BreakGlassLink, str]:
    """A one-time sign-in link, valid 15 minutes, for the emergency superuser `username`: created (a superuser
    with no password) when no such account exists. For when the identity provider is down or misconfigured.

    Refuses: no reason (invalid), an existing account that is not an active superuser (forbidden).
    Audit: `user.created` (when created), `user.breakglass_issued`.
    """
    reason = (reason or "").strip()
    require(reason, "invalid", "Say why the break-glass account is needed.", field="reason")
    user_model = get_user_model()
    user = user_model.objects.select_for_update().filter(username=username).first()
    if user is None:
        require(identity.USERNAME.fullmatch(username or ""), "invalid", f"{username!r} is not a valid username.",
                field="username")
        user = user_model(username=username, is_active=True, is_staff=True, is_superuser=True)
        user.set_unusable_password()
        user.save()
        audit.record(BREAKGLASS_ACTOR, "user.created", user, reason=reason,
                     data={"user": username, "via": "breakglass", "is_superuser": True, "issued_by": issued_by})
    require(user.is_active and user.is_superuser, "forbidden",
            f"{username} is not an active superuser; break-glass links are only for the emergency superuser.")
    raw = "bg_" + secrets.token_urlsafe(32)
    now = clock.now()
    link = BreakGlassLink.objects.create(user=user, digest=BreakGlassLink.digest_of(raw), reason=reason,
                                         issued_by=issued_by[:150], created_at=now,
                                         expires_at=now + BREAKGLASS_LINK_LIFETIME)
    audit.record(BREAKGLASS_ACTOR, "user.breakglass_issued", user, reason=reason,
                 data={"user": username, "link": link.pk, "issued_by": link.issued_by, "expires_at": link.expires_at})
    return link, raw


@transaction.atomic
def use_breakglass_link(raw: str) -> AbstractBaseUser:
    """Spend a break-glass link: its superuser may be signed in, once.

    Refuses: an unknown link (not_found), one used or expired (conflict), an account that is no longer an active
    superuser (forbidden). Audit: `user.breakglass_used`.
    """
    digest = BreakGlassLink.digest_of(raw or "")
    link = BreakGlassLink.objects.select_for_update().select_related("user").filter(digest=digest).first()
    require(link is not None, "not_found", "This sign-in link is not valid.")
    require(link.used_at is None, "conflict", "This sign-in link was already used; run manage.py breakglass again.")
    now = clock.now()
    require(link.expires_at > now, "conflict", "This sign-in link has expired; run manage.py breakglass again.")
    require(link.user.is_active and link.user.is_superuser, "forbidden",
            "This account is no longer an active superuser.")
    link.used_at = now
    link.save(update_fields=["used_at"])
    audit.record(link.user, "user.breakglass_used", link.user, data={"user": link.user.get_username(), "link": link.pk},
                 reason=link.reason)
    return link.user


# --- sign-in throttling (django-axes counts and refuses; governance.login_throttling plugs it in) -----

LOGIN_THROTTLE_ACTOR = "system:login-throttle"


def _sign_in_subject(username: str) -> Any:
    """The account a username names, or the username itself when no account has it."""
    user = get_user_model().objects.filter(username=username).first()
    return user if user is not None else ("login.username", username[:64])


@transaction.atomic
def record_login_lockout(*, username: str, ip_address: str, failures: int, locked_by: list[str],
                         until: datetime | None) -> None:
    """Record a sign-in lockout: the failed password that brought an account's or an address's count
    (`locked_by`: username, ip_address, username+ip_address) to LOGIN_FAILURE_LIMIT within the cool-off,
    so that every sign-in with that username or from that address is refused until `until`. django-axes
    counts and refuses; this runs in the transaction that counted (governance.login_throttling).

    Audit: `login.locked_out` (actor `system:login-throttle`), about the account when the username is
    locked, else the address.
    """
    username = username.replace("\x00", "")[:150]
    by_username = any("username" in key for key in locked_by)
    subject = _sign_in_subject(username) if by_username else ("login.address", ip_address or "unknown")
    audit.record(LOGIN_THROTTLE_ACTOR, "login.locked_out", subject, data={
        "username": username, "ip_address": ip_address, "locked_by": locked_by, "failures": failures, "until": until})


@transaction.atomic
def unlock_login(*, actor: AbstractBaseUser, username: str = "", ip_address: str = "") -> int:
    """Lift a sign-in lockout before its cool-off ends: forget the failed sign-ins counted against one
    account (from any address) or one address (for any account). Administrators only; refused
    (`not_locked`) when none are counted. Returns how many failures were forgotten.

    Audit: `login.unlocked` with that number and whether they had locked it out.
    """
    require(isinstance(actor, AbstractBaseUser) and actor.is_active and is_administrator(actor), "forbidden",
            "Only administrators lift sign-in lockouts.")
    require(bool(username) != bool(ip_address), "invalid", "Name one account or one address.")
    if ip_address:
        try:
            ip_address = str(ipaddress.ip_address(ip_address.strip()))
        except ValueError:
            raise TransitionRefused("invalid", f"{ip_address!r} is not an IP address.", field="ip_address") from None
    attempts = AccessAttempt.objects.select_for_update().filter(
        **({"username": username} if username else {"ip_address": ip_address}))
    rows = list(attempts.values_list("attempt_time", "failures_since_start"))
    what = f"the account {username}" if username else f"the address {ip_address}"
    require(rows, "not_locked", f"No failed sign-ins are counted against {what}.")
    since = clock.now() - get_cool_off()
    was_locked = sum(failures for at, failures in rows if at >= since) >= get_failure_limit(None, None)
    forgotten = sum(failures for _, failures in rows)
    attempts.delete()
    subject = _sign_in_subject(username) if username else ("login.address", ip_address)
    audit.record(actor, "login.unlocked", subject, data={
        "username": username, "ip_address": ip_address, "failures_forgotten": forgotten, "was_locked": was_locked})
    return forgotten

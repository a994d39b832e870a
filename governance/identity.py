"""What an identity provider's answer means for Ringfence, as pure functions over its claims and the group
mappings: no I/O, no writes (the sign-in service in governance/services.py applies the result).

    claims = {"sub": "00u1", "preferred_username": "alice", "email": "alice@example.com",
              "email_verified": True, "groups": ["payments-approvers"]}
    username_from(claims)                       # "alice"
    groups_from(claims, "groups")               # ["payments-approvers"]
    grants_for(mappings, ["payments-approvers"])  # Grants(roles={"approver": [...]}, permissions={...})
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from core.errors import TransitionRefused

# The audit trail's name for changes the provider's answer made at sign-in (role.granted, scope.revoked, …).
IDENTITY_ACTOR = "system:identity-provider"

USERNAME = re.compile(r"^[\w.@+-]{1,150}$")


def username_from(claims: dict[str, Any]) -> str:
    """`preferred_username`, else the email; a value Django would not take as a username is skipped."""
    for candidate in (claims.get("preferred_username"), claims.get("email")):
        if isinstance(candidate, str) and USERNAME.fullmatch(candidate.strip()):
            return candidate.strip()
    raise TransitionRefused("invalid", "The identity provider sent neither a usable preferred_username nor an "
                            "email, so Ringfence cannot name this account.")


def email_from(claims: dict[str, Any]) -> str:
    email = claims.get("email")
    if not isinstance(email, str) or len(email) > 254:
        return ""
    try:
        validate_email(email)
    except ValidationError:
        return ""
    return email


def email_verified(claims: dict[str, Any]) -> bool:
    """Only the provider's explicit `email_verified: true` (some send the string "true")."""
    value = claims.get("email_verified")
    return value is True or (isinstance(value, str) and value.lower() == "true")


def groups_from(claims: dict[str, Any], claim: str) -> list[str]:
    """The groups claim as a sorted list of names: a list of strings, or one string (some providers send a
    single group that way). Anything else is no groups."""
    value = claims.get(claim)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return sorted({item.strip() for item in value if isinstance(item, str) and item.strip()})


@dataclass
class Grants:
    """What the mappings give: each role, and each (workflow slug, permission codename), with the groups that
    give it."""

    roles: dict[str, list[str]] = field(default_factory=dict)
    permissions: dict[tuple[str, str], list[str]] = field(default_factory=dict)


def grants_for(mappings: Iterable[Any], groups: Iterable[str]) -> Grants:
    """Join the mappings of the person's groups (objects with `group`, `roles`, `scope`)."""
    member_of = set(groups)
    out = Grants()
    for mapping in sorted(mappings, key=lambda m: m.group):
        if mapping.group not in member_of:
            continue
        for role in mapping.roles:
            out.roles.setdefault(role, []).append(mapping.group)
        for slug, codenames in mapping.scope.items():
            for codename in codenames:
                out.permissions.setdefault((slug, codename), []).append(mapping.group)
    return out

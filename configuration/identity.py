"""ringfence.yaml's `identity` section: which identity-provider group gives which roles and workflow scope.

    identity:
      groups:
        - group: payments-approvers
          roles: [approver]
          scope: {refund-agent: [view, approve]}

One object per group, `group_mapping/<group>` (roles, scope), planned and applied like the rest of the file
through governance.services.define_group_mapping / remove_group_mapping. Without an `identity` key the live
mappings are left alone; `--prune` removes the mappings a present section does not name. Members get what a
mapping gives, and lose what it gave, at their next sign-in.

What a mapping gave someone is the identity provider's, not the file's: it is left out of the live `scope`
objects (so export does not copy it into `scope:` and prune does not revoke it), unless the file itself names
that permission for that person.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import AbstractBaseUser

from configuration.document import Document
from governance import services as governance_services
from governance.models import GroupMapping, IdentityGrant

KIND = "group_mapping"
SHORT = {"view_workflow": "view", "approve_workflow": "approve", "contain_workflow": "contain",
         "manage_rollouts": "manage_rollouts"}
CODENAME = {short: code for code, short in SHORT.items()}


def desired(doc: Document) -> dict[tuple[str, str], tuple[dict, tuple]]:
    if doc.identity is None:
        return {}
    return {(KIND, m.group.strip()): ({"roles": sorted(set(m.roles)),
                                      "scope": {slug: sorted(set(m.scope[slug])) for slug in sorted(m.scope)}},
                                     ("identity", "groups", j))
            for j, m in enumerate(doc.identity.groups)}


def complete_live(state: dict[tuple[str, str], dict], wanted: dict[tuple[str, str], Any]) -> None:
    """Add the live mappings to `state` (planning.live's form) and take out of its `scope` objects the
    permissions a mapping gave, except those `wanted` (the file) names for that person too."""
    for mapping in GroupMapping.objects.all():
        scope = {slug: sorted(SHORT.get(c, c) for c in codenames) for slug, codenames in sorted(mapping.scope.items())}
        state[(KIND, mapping.group)] = {"roles": sorted(mapping.roles), "scope": scope}
    given = IdentityGrant.objects.filter(workflow__isnull=False).values_list("workflow__slug", "user__username",
                                                                            "permission")
    for slug, username, codename in given:
        key = ("scope", f"{slug}/{username}")
        if key not in state:
            continue
        declared = wanted.get(key)
        if declared is not None and SHORT.get(codename) in declared[0]["permissions"]:
            continue
        remaining = [p for p in state[key]["permissions"] if p != SHORT.get(codename)]
        if remaining:
            state[key] = {"permissions": remaining}
        else:
            del state[key]


def pruned(doc: Document, state: dict[tuple[str, str], dict],
           wanted: dict[tuple[str, str], Any]) -> list[tuple[str, str, dict]]:
    """With --prune: the live mappings a present `identity` section does not name, as (kind, key, fields)."""
    if doc.identity is None:
        return []
    return [(kind, key, fields) for (kind, key), fields in sorted(state.items())
            if kind == KIND and (kind, key) not in wanted]


def check(doc: Document, workflows: set[str], roles: set[str], problem: Callable[[tuple, str, str], None]) -> None:
    if doc.identity is None:
        return
    seen: set[str] = set()
    for j, mapping in enumerate(doc.identity.groups):
        path, label = ("identity", "groups", j), f"identity.groups[{j}]"
        group = mapping.group.strip()
        if group in seen:
            problem((*path, "group"), f"{label}.group", f"the group {group!r} is mapped twice")
        seen.add(group)
        if not group:
            problem((*path, "group"), f"{label}.group", "name the group")
        if not mapping.roles and not mapping.scope:
            problem(path, label, "a mapping gives roles, scope or both")
        for k, role in enumerate(mapping.roles):
            if role not in roles:
                problem((*path, "roles", k), f"{label}.roles[{k}]", f"no role {role!r}")
        for slug, permissions in mapping.scope.items():
            if slug not in workflows:
                problem((*path, "scope", slug), f"{label}.scope.{slug}", f"no workflow {slug!r} in the file or in "
                                                                         "Ringfence")
            if not permissions:
                problem((*path, "scope", slug), f"{label}.scope.{slug}", "name at least one permission")


def apply(op: str, key: str, wanted: dict, actor: AbstractBaseUser) -> None:
    if op == "delete":
        governance_services.remove_group_mapping(actor=actor, group=key)
        return
    governance_services.define_group_mapping(
        actor=actor, group=key, roles=wanted["roles"],
        scope={slug: [CODENAME[p] for p in permissions] for slug, permissions in wanted["scope"].items()})


def exported(state: dict[tuple[str, str], dict]) -> dict:
    """The `identity` section of an export, or nothing when no group is mapped."""
    groups = []
    for (kind, key), fields in sorted(state.items()):
        if kind != KIND:
            continue
        entry: dict[str, Any] = {"group": key}
        if fields["roles"]:
            entry["roles"] = fields["roles"]
        if fields["scope"]:
            entry["scope"] = fields["scope"]
        groups.append(entry)
    return {"identity": {"groups": groups}} if groups else {}

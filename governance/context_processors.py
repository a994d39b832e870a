from __future__ import annotations

from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

from governance.permissions import Role
from governance.selectors import has_role

# (label, url name, roles that see it; empty = every signed-in person). Entries whose URL is
# not installed are left out, so the menu only ever shows pages that exist. Auditors read every
# workflow: the rollouts and dashboards are theirs to open too (read-only).
NAVIGATION = [
    ("Queue", "approvals:queue", {Role.APPROVER, Role.SENIOR_APPROVER, Role.CONTAINMENT_OWNER}),
    ("Rollouts", "rollouts:plan_list", {Role.RELEASE_MANAGER, Role.CONTAINMENT_OWNER, Role.MANAGER, Role.AUDITOR}),
    ("Reviews", "rollouts:reviews", {Role.CONTAINMENT_OWNER}),
    ("Dashboards", "rollouts:dashboard", {Role.MANAGER, Role.RELEASE_MANAGER, Role.AUDITOR}),
    ("Workflows", "governance:workflow_list", set()),
    ("Metrics", "rollouts:metrics", {Role.RELEASE_MANAGER, Role.ADMINISTRATOR}),
    ("People", "governance:people", {Role.ADMINISTRATOR}),
    ("Audit trail", "audit:log", {Role.AUDITOR}),
    ("Admin", "admin:index", {Role.ADMINISTRATOR}),
]


def role_label(role: str) -> str:
    """A role as people say it: `senior_approver` → `senior approver`."""
    return str(role).replace("_", " ")


def _current(path: str, urls: list[str]) -> str | None:
    """The one menu entry a page belongs to: the longest menu URL its path starts with, so
    /rollouts/dashboards/ is Dashboards, not Rollouts as well."""
    matches = [url for url in urls if path.startswith(url)]
    return max(matches, key=len) if matches else None


def navigation(request: HttpRequest) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav_items": []}
    items = []
    for label, url_name, roles in NAVIGATION:
        if roles and not user.is_superuser and not any(has_role(user, role) for role in roles):
            continue
        try:
            url = reverse(url_name)
        except NoReverseMatch:
            continue
        items.append({"label": label, "url": url})
    current = _current(request.path, [item["url"] for item in items])
    for item in items:
        item["active"] = item["url"] == current
    roles = sorted(r for r in Role if has_role(user, r))
    return {"nav_items": items, "user_roles": roles, "user_role_labels": [role_label(r) for r in roles]}

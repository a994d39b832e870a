"""Each demo person signs in with Chromium and sees the navigation of their role and only the
workflows in their scope; a workflow outside it is "Not Found" for them."""

from __future__ import annotations

import pytest
from django.urls import NoReverseMatch, reverse

from configuration import demo as configuration_demo
from governance import demo
from governance.permissions import Role
from tests.e2e.conftest import login

pytestmark = pytest.mark.browser

# The menu each role is meant to have (README's table of demo logins); an entry appears once its
# page exists.
PAGES = {
    "Queue": "approvals:queue", "Rollouts": "rollouts:plan_list", "Reviews": "rollouts:reviews",
    "Dashboards": "rollouts:dashboard", "Workflows": "governance:workflow_list",
    "Audit trail": "audit:log", "Admin": "admin:index", "Metrics": "rollouts:metrics",
    "People": "governance:people",
}
MENU = {
    Role.ADMINISTRATOR: {"Workflows", "Metrics", "People", "Admin"},
    Role.APPROVER: {"Queue", "Workflows"},
    Role.SENIOR_APPROVER: {"Queue", "Workflows"},
    Role.CONTAINMENT_OWNER: {"Queue", "Rollouts", "Reviews", "Workflows"},
    Role.RELEASE_MANAGER: {"Rollouts", "Dashboards", "Workflows", "Metrics"},
    Role.MANAGER: {"Rollouts", "Dashboards", "Workflows"},
    Role.AUDITOR: {"Rollouts", "Dashboards", "Workflows", "Audit trail"},
}
DOCUMENT = configuration_demo.document()
ALL_WORKFLOWS = {wf.slug for wf in DOCUMENT.workflows}


def _installed(label: str) -> bool:
    try:
        reverse(PAGES[label])
    except NoReverseMatch:
        return False
    return True


def _scope(username: str, role: Role) -> set[str]:
    """The demo story: auditors read everything and administrators set everything up, everyone
    else sees the workflows they were given scope on or own a containment duty of."""
    if role in (Role.AUDITOR, Role.ADMINISTRATOR):
        return ALL_WORKFLOWS
    return {wf.slug for wf in DOCUMENT.workflows if username in wf.scope
            or any(username in (o.primary, *o.backup) for o in wf.containment.values())}


def _listed_workflows(page) -> set[str]:
    page.goto("/workflows/")
    hrefs = page.eval_on_selector_all("main table a[href^='/workflows/']", "links => links.map(a => a.pathname)")
    return {href.strip("/").split("/")[1] for href in hrefs}


def test_each_demo_role_sees_its_navigation_and_only_its_workflows(page):
    demo.seed()
    configuration_demo.seed()
    seen = {}
    for username, _, role in demo.PEOPLE:
        page.context.clear_cookies()
        login(page, username)
        assert page.locator("header .who").inner_text().startswith(username)

        menu = page.locator("nav[aria-label=Main] a").all_inner_texts()
        expected_menu = {label for label in MENU[role] if _installed(label)}
        assert set(menu) == expected_menu, f"{username} ({role}) sees {menu}"
        assert len(menu) == len(set(menu))

        listed = _listed_workflows(page)
        assert listed == _scope(username, role), f"{username} ({role}) sees {sorted(listed)}"
        for slug in sorted(ALL_WORKFLOWS - listed)[:1]:
            response = page.goto(f"/workflows/{slug}/")
            assert response.status == 404, f"{username} opened {slug}"
            assert slug not in page.content()
        seen[username] = (len(menu), len(listed))

    print(f"browser: {len(seen)} demo people signed in; (menu entries, workflows listed) = {seen}")

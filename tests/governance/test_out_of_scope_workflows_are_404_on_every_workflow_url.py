"""ACL-01: every workflow URL of the governance pages, found by walking the URL configuration (so a
new page is covered the day it is added): out of scope → 404 that says nothing about the
workflow, in scope → 200, auditors read everything and change nothing.
"""

from __future__ import annotations

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from governance.models import Workflow
from tests.governance.support import database_state

NAMESPACE = "governance"


def _routes(patterns=None, namespace: str | None = None):
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(entry, URLResolver):
            yield from _routes(entry.url_patterns, entry.namespace or namespace)
        elif isinstance(entry, URLPattern) and namespace == NAMESPACE and entry.name:
            yield entry


ROUTES = list(_routes())
# A workflow URL names a workflow by its slug; the pages without parameters list what is in scope.
WORKFLOW_ROUTES = sorted(r.name for r in ROUTES if set(r.pattern.converters) == {"slug"})
LIST_ROUTES = sorted(r.name for r in ROUTES if not r.pattern.converters)
OTHER_ROUTES = sorted(r.name for r in ROUTES if r.name not in WORKFLOW_ROUTES + LIST_ROUTES)


def _url(route: str, workflow: Workflow | str) -> str:
    return reverse(f"{NAMESPACE}:{route}", kwargs={"slug": getattr(workflow, "slug", workflow)})


def _mentions(body: bytes, workflow: Workflow) -> list[str]:
    text = body.decode("utf-8", "replace")
    return [value for value in (workflow.slug, workflow.name, workflow.description) if value and value in text]


def test_the_workflow_pages_are_found_by_walking_the_url_configuration(figures):
    figures(f"ACL-01 routes in '{NAMESPACE}': {len(ROUTES)}; workflow URLs covered: {len(WORKFLOW_ROUTES)} "
            f"{WORKFLOW_ROUTES}; list pages checked for leaks: {len(LIST_ROUTES)}; other: {OTHER_ROUTES}")
    assert {"workflow_detail", "pause", "resume"} <= set(WORKFLOW_ROUTES)
    assert "workflow_list" in LIST_ROUTES


@pytest.mark.django_db
@pytest.mark.parametrize("route", WORKFLOW_ROUTES)
def test_out_of_scope_workflow_is_404_and_reveals_nothing(client, route, workflow, other_workflow, approver, outsider):
    # alice (approver) is in scope of `workflow` only; mallory of nothing.
    before = database_state()
    for user, target in ((approver, other_workflow), (outsider, workflow), (outsider, other_workflow)):
        client.force_login(user)
        statuses = []
        for method in ("get", "post"):
            response = getattr(client, method)(_url(route, target), {"reason": "acl probe"})
            # 405 is a method the page never takes (the same for every slug); anything else is 404.
            assert response.status_code in (404, 405), f"{method.upper()} {route} as {user} → {response.status_code}"
            assert not _mentions(response.content, target), f"{route} leaks {_mentions(response.content, target)}"
            # Out of scope and non-existent look the same: existence is never confirmed.
            missing = getattr(client, method)(_url(route, "no-such-workflow"), {"reason": "acl probe"})
            assert (missing.status_code, missing.content) == (response.status_code, response.content)
            statuses.append(response.status_code)
        assert 404 in statuses
    assert database_state() == before


@pytest.mark.django_db
@pytest.mark.parametrize("route", WORKFLOW_ROUTES)
def test_in_scope_workflow_url_answers(client, route, workflow, approver):
    client.force_login(approver)
    response = client.get(_url(route, workflow))
    if response.status_code == 405:  # an action: POST only, exercised below
        return
    assert response.status_code == 200
    assert _mentions(response.content, workflow)


@pytest.mark.django_db
@pytest.mark.parametrize("route", WORKFLOW_ROUTES)
def test_auditor_reads_every_workflow_and_changes_nothing(client, route, workflow, other_workflow, auditor):
    client.force_login(auditor)
    before = database_state()
    for target in (workflow, other_workflow):
        response = client.get(_url(route, target))
        assert response.status_code in (200, 405), f"GET {route} as auditor → {response.status_code}"
        response = client.post(_url(route, target), {"reason": "auditor probe"})
        assert not 300 <= response.status_code < 400, f"POST {route} as auditor was accepted"
    assert database_state() == before


@pytest.mark.django_db
def test_the_kill_switch_works_in_scope_so_the_404s_above_mean_something(client, workflow, containment_owner):
    client.force_login(containment_owner)
    response = client.post(_url("pause", workflow), {"reason": "refunds look wrong"})
    assert response.status_code == 302
    workflow.refresh_from_db()
    assert workflow.paused and workflow.paused_reason == "refunds look wrong"


@pytest.mark.django_db
@pytest.mark.parametrize("route", LIST_ROUTES)
def test_list_pages_show_nothing_of_out_of_scope_workflows(client, route, workflow, other_workflow, approver, outsider):
    for user, hidden in ((approver, [other_workflow]), (outsider, [workflow, other_workflow])):
        client.force_login(user)
        response = client.get(reverse(f"{NAMESPACE}:{route}"))
        assert response.status_code in (200, 403, 404, 405), f"{route} as {user} → {response.status_code}"
        for target in hidden:
            assert not _mentions(response.content, target), f"{route} shows {target.slug} to {user}"
    client.force_login(approver)
    if route == "workflow_list":
        assert _mentions(client.get(reverse(f"{NAMESPACE}:{route}")).content, workflow)


@pytest.mark.django_db
@pytest.mark.parametrize("route", WORKFLOW_ROUTES)
def test_anonymous_visitors_are_sent_to_sign_in(client, route, workflow):
    response = client.get(_url(route, workflow))
    assert response.status_code in (302, 405)
    if response.status_code == 302:
        assert response["Location"].startswith(reverse("login"))

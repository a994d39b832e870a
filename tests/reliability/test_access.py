"""ACL-10: every denial of scope leaves a security log record (not an audit event).
ACL-11: the scoped list pages cost a constant number of queries, however much is out of scope."""

from __future__ import annotations

import datetime as dt
import logging
import time

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern, URLResolver, get_resolver

from governance.models import AuditEvent, Workflow
from governance.permissions import Role
from tests import factories

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]

SECURITY_LOGGER = "ringfence.security"


def _routes(resolver: URLResolver | None = None, prefix: str = "") -> list[tuple[str, URLPattern]]:
    """Every URL pattern with its full route, the admin's own and the API's excepted."""
    routes = []
    for entry in (resolver or get_resolver()).url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            if route.startswith(("admin/", "api/")):
                continue
            routes.extend(_routes(entry, route))
        else:
            routes.append((route, entry))
    return routes


def _fill(route: str, values: dict[str, str]) -> str | None:
    """The route with its <converter:name> parts filled in, or None when a name has no value."""
    path = route.lstrip("^").rstrip("$")
    while "<" in path:
        start, end = path.index("<"), path.index(">")
        name = path[start + 1:end].split(":")[-1]
        if name not in values:
            return None
        path = path[:start] + values[name] + path[end + 1:]
    return "/" + path


def test_acl10_every_denied_workflow_route_is_logged_to_the_security_logger(client: Client, caplog, figures,
                                                                           workflow, other_workflow, approver):
    """An approver of one workflow probes every page of another (and one that does not exist)."""
    client.force_login(approver)
    caplog.set_level(logging.INFO, logger=SECURITY_LOGGER)
    routes = _routes()
    slug_routes = [route for route, _ in routes if "<slug:slug>" in route]
    probes = [path for slug in (other_workflow.slug, "no-such-workflow") for route in slug_routes
              if (path := _fill(route, {"slug": slug}))]
    # In scope but without the containment permission: the kill switch is refused (403, or 422
    # with the refusal shown in the form).
    refused_in_scope = [f"/workflows/{workflow.slug}/pause/", f"/workflows/{workflow.slug}/resume/"]
    probes += refused_in_scope
    events_before = AuditEvent.objects.count()

    denied, logged, unlogged = 0, 0, []
    for path in probes:
        records_before = len([r for r in caplog.records if r.name == SECURITY_LOGGER])
        response = client.get(path)
        if response.status_code == 405:
            response = client.post(path, {"reason": "probe"})
        refused = response.status_code in (401, 403, 404) or (
            path in refused_in_scope and response.status_code == 422)
        if not refused:
            continue
        denied += 1
        records = [r for r in caplog.records if r.name == SECURITY_LOGGER][records_before:]
        if records:
            logged += 1
        else:
            unlogged.append((path, response.status_code))
    figures.report("ACL-10", f"{logged}/{denied} denials logged to {SECURITY_LOGGER} "
                             f"({len(slug_routes)} workflow routes x 2 out-of-scope slugs + 2 refused kill switches; "
                             f"{len(routes)} web routes in all)",
                   denied=denied, logged=logged, routes=len(slug_routes))
    assert denied >= 2 * len(slug_routes) + 2
    assert not unlogged, unlogged
    assert AuditEvent.objects.count() == events_before, "denials go to the security log, not the audit chain"


WORKFLOWS, SCOPED = 500, 50


def _queries(client: Client, path: str) -> tuple[int, float, bytes]:
    with CaptureQueriesContext(connection) as ctx:
        started = time.monotonic()
        response = client.get(path)
        elapsed = time.monotonic() - started
    assert response.status_code == 200, (path, response.status_code)
    return len(ctx.captured_queries), elapsed, response.content


@pytest.mark.parametrize("role, path", [(Role.APPROVER, "/workflows/")])
def test_acl11_list_pages_cost_constant_queries_whatever_the_scope(client: Client, figures, admin_user, role, path):
    # The rows only: how they were created is not what this test measures (scope grants below go
    # through the service).
    workflows = Workflow.objects.bulk_create(
        Workflow(slug=f"wf-{n:03}", name=f"Workflow {n:03}", business_start=dt.time(9), business_end=dt.time(17))
        for n in range(WORKFLOWS))
    user = factories.make_user("scoped", role=role)
    client.force_login(user)
    counts, granted = {}, 0
    for scoped in (5, SCOPED):
        for workflow in workflows[granted:scoped]:
            factories.scope(user, workflow)
        granted = scoped
        client.get(path)  # warm per-process caches (content types, sessions)
        queries, elapsed, content = _queries(client, path)
        counts[scoped] = (queries, elapsed)
        assert content.count(b'href="/workflows/wf-') == scoped
    (q_small, _), (q_large, ms_large) = counts[5], counts[SCOPED]
    figures.report("ACL-11", f"{path} as {role}: {q_large} queries with {SCOPED} of {WORKFLOWS} workflows in scope "
                             f"({q_small} with 5); {ms_large * 1000:.0f} ms",
                   path=path, queries=q_large, queries_small_scope=q_small, ms=round(ms_large * 1000))
    assert q_large == q_small, "queries grow with the number of workflows in scope"
    assert q_large <= 12

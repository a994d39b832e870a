"""ACL-10: every denial of scope leaves a security log record (not an audit event).
ACL-11: the scoped pages cost a constant number of queries, however much is in or out of scope."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern, URLResolver, get_resolver

from approvals import services as approval_services
from audit.models import AuditEvent
from governance import services as governance_services
from governance.models import Workflow
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
    """The route with each <converter:name> part replaced by values[name]; None if one is missing."""
    path = route.lstrip("^").rstrip("$")
    while "<" in path:
        start, end = path.index("<"), path.index(">")
        name = path[start + 1:end].rpartition(":")[2]
        if name not in values:
            return None
        path = path[:start] + values[name] + path[end + 1:]
    return "/" + path


def _out_of_scope_objects(admin, other_workflow) -> list[tuple[str, dict[str, str]]]:
    """URL prefixes (most specific first) and the ids, under them, of another workflow's objects."""
    from rollouts import plans as rollout_plans

    account = factories.make_service_account("other-bot", owner=admin, workflows=[other_workflow])
    approval = approval_services.create_request(workflow=other_workflow, kind="agent_action",
                                                action="disable_account", parameters={"account": "C-7"},
                                                requester=account)
    plan = rollout_plans.create_plan(actor=admin, workflow=other_workflow, fields={
        "name": "Other v2", "release_version": "other-v2", "stable_version": "other-v1", "executor": "flag"})
    event = AuditEvent.objects.filter(workflow_slug=other_workflow.slug).order_by("-seq").first()
    common = {"slug": other_workflow.slug, "seq": str(event.seq), "step": "ready", "action": "pause", "tag_id": "1"}
    return [
        ("rollouts/reviews/", {}),  # a review needs a rollout action; not covered here
        ("rollouts/", {**common, "pk": str(plan.pk)}),
        ("approvals/", {**common, "pk": str(approval.pk)}),
        ("audit/evidence/", {**common, "pk": str(approval.pk)}),
        ("", common),
    ]


def _security_records(caplog) -> int:
    return len([r for r in caplog.records if r.name == SECURITY_LOGGER])


def test_acl10_every_denied_web_route_is_logged_to_the_security_logger(client: Client, caplog, figures, admin_user,
                                                                      workflow, other_workflow, approver):
    """An approver of one workflow probes every page that takes an object id with another
    workflow's objects, the kill switch of their own workflow (which they may not use) and the
    auditors' chain verification (which their role does not allow)."""
    objects = _out_of_scope_objects(admin_user, other_workflow)
    client.force_login(approver)
    caplog.set_level(logging.INFO, logger=SECURITY_LOGGER)
    routes = [route for route, _ in _routes() if "<" in route]
    probes = {route: _fill(route, next(v for prefix, v in objects if route.startswith(prefix))) for route in routes}
    covered = {route: path for route, path in probes.items() if path}
    refused_in_scope = {f"kill switch {verb}": f"/workflows/{workflow.slug}/{verb}/" for verb in ("pause", "resume")}
    refused_in_scope["chain verification"] = "/audit/verify/chain/"
    events_before = AuditEvent.objects.count()
    denied, unlogged, statuses = 0, [], Counter()
    for route, path in {**covered, **refused_in_scope}.items():
        before = _security_records(caplog)
        response = client.get(path)
        if response.status_code == 405:
            response = client.post(path, {"reason": "probe", "verdict": "approve"})
        statuses[response.status_code] += 1
        # 401/403/404 are denials; in scope, the kill switch shows its refusal in the form (422).
        assert response.status_code in (401, 403, 404) or (route in refused_in_scope and response.status_code == 422), (
            route, response.status_code)
        denied += 1
        if _security_records(caplog) == before:
            unlogged.append(route)
    figures.report("ACL-10", f"web: {denied - len(unlogged)}/{denied} denials logged to {SECURITY_LOGGER} "
                             f"({len(covered)}/{len(routes)} routes with an object id probed with another workflow's "
                             f"objects + 2 refused kill switches + the auditors' verification; "
                             f"statuses {dict(sorted(statuses.items()))})"
                             + (f"; not logged: {', '.join(unlogged)}" if unlogged else ""),
                   denied=denied, logged=denied - len(unlogged), routes=len(routes), covered=len(covered))
    assert unlogged == [], f"denials without a security record: {', '.join(unlogged)}"
    assert AuditEvent.objects.count() == events_before, "denials go to the security log, not the audit chain"


def test_acl10_api_denials_are_logged_to_the_security_logger(client: Client, caplog, figures, admin_user,
                                                            other_workflow, agent):
    objects = _out_of_scope_objects(admin_user, other_workflow)
    bearer = {"HTTP_AUTHORIZATION": "Bearer " + governance_services.issue_token(agent.pk, actor=admin_user).raw}
    caplog.set_level(logging.INFO, logger=SECURITY_LOGGER)
    approval, plan = dict(objects)["approvals/"]["pk"], dict(objects)["rollouts/"]["pk"]
    probes = [
        ("no token", "get", f"/api/v1/approvals/{approval}", None, {}),
        ("unknown token", "get", f"/api/v1/approvals/{approval}", None,
         {"HTTP_AUTHORIZATION": "Bearer rf_" + "x" * 43}),
        ("another workflow's approval", "get", f"/api/v1/approvals/{approval}", None, bearer),
        ("another workflow's plan", "get", f"/api/v1/rollouts/{plan}", None, bearer),
        ("dispatch for another workflow", "post", "/api/v1/dispatch",
         {"workflow": other_workflow.slug, "action": "disable_account"}, {**bearer, "HTTP_IDEMPOTENCY_KEY": "k-1"}),
        ("pausing another workflow", "post", f"/api/v1/workflows/{other_workflow.slug}/pause", {"reason": "probe"},
         bearer),
    ]
    results, unlogged = [], []
    for what, method, path, body, headers in probes:
        before = _security_records(caplog)
        if method == "post":
            response = client.post(path, body, content_type="application/json", **headers)
        else:
            response = client.get(path, **headers)
        results.append(f"{what} {response.status_code}")
        assert response.status_code in (401, 403, 404), (what, response.status_code)
        if _security_records(caplog) == before:
            unlogged.append(f"{what} {response.status_code}")
    figures.report("ACL-10", f"API: {len(probes) - len(unlogged)}/{len(probes)} denials logged ({'; '.join(results)})",
                   denied=len(probes), logged=len(probes) - len(unlogged))
    assert unlogged == [], f"API denials without a security record: {', '.join(unlogged)}"


WORKFLOWS, SCOPED, SMALL = 500, 50, 5


def _queries(client: Client, path: str) -> tuple[int, float, bytes]:
    client.get(path)  # warm per-process caches (content types, the session)
    with CaptureQueriesContext(connection) as ctx:
        started = time.monotonic()
        response = client.get(path)
        elapsed = time.monotonic() - started
    assert response.status_code == 200, (path, response.status_code)
    return len(ctx.captured_queries), elapsed, response.content


def test_acl11_scoped_pages_cost_constant_queries_whatever_the_scope(client: Client, figures, admin_user):
    """500 workflows; an approver scoped to 5, then 50, each with a pending request in the queue."""
    # The rows only: how they were created is not what this test measures (scope grants and
    # requests below go through the services).
    workflows = Workflow.objects.bulk_create(
        Workflow(slug=f"wf-{n:03}", name=f"Workflow {n:03}", business_start=dt.time(9), business_end=dt.time(17))
        for n in range(WORKFLOWS))
    user = factories.make_user("scoped", role=Role.APPROVER)
    owner = factories.make_user("owner", role=Role.RELEASE_MANAGER)
    account = factories.make_service_account("bulk-bot", owner=owner, workflows=workflows[:SCOPED + 10])
    for workflow in workflows[:SCOPED + 10]:  # ten requests outside the approver's scope as well
        approval_services.create_request(workflow=workflow, kind="agent_action", action="refund_customer",
                                         parameters={"order": workflow.slug}, requester=account)
    client.force_login(user)
    measured = {}
    for scoped in (SMALL, SCOPED):
        for workflow in workflows[SMALL if scoped == SCOPED else 0:scoped]:
            factories.scope(user, workflow)
        for path, marker in (("/workflows/", b'href="/workflows/wf-'), ("/approvals/", b'href="/approvals/')):
            queries, elapsed, content = _queries(client, path)
            measured[path, scoped] = (queries, elapsed)
            assert content.count(marker) >= scoped, (path, scoped)
    for path in ("/workflows/", "/approvals/"):
        (small, _), (large, seconds) = measured[path, SMALL], measured[path, SCOPED]
        figures.report("ACL-11", f"{path}: {large} queries with {SCOPED} of {WORKFLOWS} workflows in scope "
                                 f"({small} with {SMALL}); {seconds * 1000:.0f} ms",
                       path=path, queries=large, queries_small_scope=small, ms=round(seconds * 1000))
    for path in ("/workflows/", "/approvals/"):
        assert measured[path, SCOPED][0] == measured[path, SMALL][0], f"{path}: queries grow with the scope"
        assert measured[path, SCOPED][0] <= 20

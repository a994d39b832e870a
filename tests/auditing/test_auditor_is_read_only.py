"""Auditors read everything and change nothing: every POST endpoint in the URL configuration is
tried against real objects (an approval request, a live plan, a review, a context tag)."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from audit.models import AuditEvent
from governance.models import Workflow

# Signing out would end the auditor's session for the endpoints after it.
SKIPPED = {"logout", "admin:logout"}
# The auditor's one write: a signed checkpoint of the log, a statement about it rather than a change
# to anything it records, itself audited. It touches the log's own tables and nothing else.
LOG_TABLES = {"audit_tree_head", "audit_entry", "governance_auditevent", "audit_tree_node"}
MAY_WRITE = {"audit:sign_checkpoint": LOG_TABLES}
PARAM = re.compile(r"<(?:(?P<converter>[a-z]+):)?(?P<name>\w+)>")
KINDS = ["pause", "resume", "narrow", "expand", "fallback", "rollback", "complete"]
FORM = {"reason": "auditor was here", "verdict": "approve", "justification": "x", "note": "x", "to_ring": "0",
        "exposure_percent": "10", "mode": "human_review", "kind": "migration_window",
        "starts_at": "2098-12-31T00:00", "ends_at": "2099-01-01T00:00"}
# Bodies that pass each form, so the refusal comes from the permission check.
FORM_FOR = {"approvals:decide": {"verdict": "approve", "reason": "", "justification": "looks right"},
            "rollouts:review": {"verdict": "correct", "reason": ""},
            "rollouts:plan_action": {"to_ring": "0", "exposure_percent": ""}}
JSON = {"reason": "auditor was here", "workflow": "refund-agent", "action": "refund_customer", "kind": "rollback",
        "confidence": 0.9, "evidence": {}, "ends_at": "2099-01-01T00:00:00Z", "signals": []}


def url_patterns(resolver: URLResolver = None, prefix: str = "", namespace: str = ""):
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        route = prefix + str(entry.pattern).lstrip("^").rstrip("$")
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from url_patterns(entry, route, inner)
        elif isinstance(entry, URLPattern):
            yield route, f"{namespace}{entry.name}" if entry.name else route


def concrete(route: str, values: dict[str, str]) -> str | None:
    """A URL for the route with the given path values (1 or "x" where none is given)."""
    if any(ch in route for ch in "()[]?*+\\"):  # a regex route (the admin's): fill the simple ones only
        route = route.replace("(?P<app_label>auth|governance|guardian)", "governance")
        if any(ch in route for ch in "()[]?*+\\"):
            return None
    return "/" + PARAM.sub(lambda m: values.get(m["name"]) or ("1" if m["converter"] in ("int", None) else "x"), route)


def variants(route: str) -> list[dict[str, str]]:
    """Every containment action and launch step, where the route takes one."""
    names = {m["name"] for m in PARAM.finditer(route)}
    if "action" in names:
        return [{"action": kind} for kind in KINDS]
    if "step" in names:
        return [{"step": step} for step in ("ready", "start")]
    return [{}]


def database_fingerprint() -> dict[str, str]:
    """A digest of every row of every table but the sessions, in one query: any write shows."""
    tables = [t for t in connection.introspection.table_names() if t != "django_session"]
    digests = " UNION ALL ".join(
        f"SELECT '{t}', md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), '')) FROM \"{t}\" r" for t in tables)
    with connection.cursor() as cursor:
        cursor.execute(digests)
        return dict(cursor.fetchall())


@pytest.fixture
def targets(workflow, other_workflow, admin_user, containment_owner, approver) -> dict[str, dict[str, str]]:
    """Path values by URL name prefix, so each POST meets the permission check rather than a 404."""
    from approvals.models import ApprovalRequest
    from rollouts.models import ContextTag
    from tests.dashboards.conftest import tell

    story = tell(workflow, other_workflow, admin_user, containment_owner, approver)
    pending = ApprovalRequest.objects.filter(workflow=workflow, state="pending").latest("created_at")
    return {
        "": {"slug": workflow.slug, "seq": "1", "fmt": "jsonl", "token": "t", "job": "j", "key": "exposure",
             "object_id": str(workflow.pk), "model_name": "workflow", "pk": str(story.other_plan.pk),
             "plan_id": str(story.other_plan.pk), "id": str(pending.pk)},
        "approvals": {"pk": str(pending.pk)},
        "rollouts:review": {"pk": str(story.review.pk)},
        "rollouts:tag_withdraw": {"pk": str(story.plan.pk), "tag_id": str(ContextTag.objects.get(plan=story.plan).pk)},
    }


def values_for(name: str, targets: dict[str, dict[str, str]]) -> dict[str, str]:
    values = dict(targets[""])
    for prefix, extra in targets.items():
        if prefix and (name == prefix or name.startswith(prefix + ":")):
            values.update(extra)
    return values


def test_every_write_endpoint_refuses_an_auditor(client, auditor, targets, workflow):
    client.force_login(auditor)
    tried = {}
    for route, name in url_patterns():
        if name in SKIPPED:
            continue
        for variant in variants(route):
            url = concrete(route, {**values_for(name, targets), **variant})
            if url is None:
                continue
            before = database_fingerprint()
            if url.startswith("/api/"):
                body = {"reason": JSON["reason"]} if url.endswith(("/pause", *KINDS)) else JSON
                response = client.post(url, body, content_type="application/json")
            else:
                response = client.post(url, {**FORM, **FORM_FOR.get(name, {})})
            tried[url] = response.status_code
            assert response.status_code < 500, f"POST {url} failed with {response.status_code}"
            changed = [table for table, digest in database_fingerprint().items() if before.get(table) != digest]
            assert not set(changed) - MAY_WRITE.get(name, set()), f"POST {url} by an auditor changed {changed}"
    # The write endpoints were reached with real objects and refused, not missed.
    plan, review = targets[""]["pk"], targets["rollouts:review"]["pk"]
    refused = {url: tried[url] for url in (
        f"/approvals/{targets['approvals']['pk']}/decide/", f"/rollouts/reviews/{review}/",
        *(f"/rollouts/{plan}/actions/{kind}/" for kind in KINDS))}
    assert set(refused.values()) <= {403, 409}, refused  # forbidden, or the state allows no such change
    assert tried["/workflows/refund-agent/pause/"] == 403  # the site's 403 page, saying what the auditor lacks
    assert tried["/api/v1/workflows/refund-agent/pause"] in (401, 403, 404)
    assert tried[f"/api/v1/rollouts/{plan}/rollback"] in (401, 403, 404)
    assert len(tried) >= 40 and not Workflow.objects.get(pk=workflow.pk).paused


def test_auditor_cannot_pause_a_workflow_with_a_valid_form(client, auditor, workflow):
    client.force_login(auditor)
    before = AuditEvent.objects.count()
    response = client.post(reverse("governance:pause", args=[workflow.slug]), {"reason": "I would like to stop it"})
    assert response.status_code == 403 and "needs the permission to take containment actions" in response.text
    assert not Workflow.objects.get(pk=workflow.pk).paused and AuditEvent.objects.count() == before


def test_auditor_pages_offer_no_write_controls(client, auditor, workflow, decision_log):
    client.force_login(auditor)
    for url in (reverse("governance:workflow_detail", args=[workflow.slug]), reverse("audit:log"),
                reverse("audit:event", args=[decision_log[0].seq])):
        page = client.get(url).content.decode()
        assert "Pause every dispatch" not in page and "Resume" not in page

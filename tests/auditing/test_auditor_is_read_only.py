"""Auditors read everything and change nothing: every POST endpoint in the URL configuration is tried."""

from __future__ import annotations

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from django.db import connection

from governance.models import AuditEvent, Workflow

# Signing out would end the auditor's session for the endpoints after it.
SKIPPED = {"logout", "admin:logout"}
PARAM = re.compile(r"<(?:(?P<converter>[a-z]+):)?(?P<name>\w+)>")


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
    if any(ch in route for ch in "()[]?*+\\"):  # a regex route (the admin's): fill the simple ones only
        route = route.replace("(?P<app_label>auth|governance|guardian)", "governance")
        if any(ch in route for ch in "()[]?*+\\"):
            return None
    return "/" + PARAM.sub(lambda m: values.get(m["name"]) or ("1" if m["converter"] in ("int", None) else "x"), route)


def database_fingerprint() -> dict[str, str]:
    """A digest of every row of every table but the sessions, in one query: any write shows."""
    tables = [t for t in connection.introspection.table_names() if t != "django_session"]
    digests = " UNION ALL ".join(
        f"SELECT '{t}', md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), '')) FROM \"{t}\" r" for t in tables)
    with connection.cursor() as cursor:
        cursor.execute(digests)
        return dict(cursor.fetchall())


@pytest.fixture
def sample_values(workflow, decision_log) -> dict[str, str]:
    return {"slug": workflow.slug, "seq": str(decision_log[0].seq), "fmt": "jsonl", "token": "t", "job": "j",
            "object_id": str(workflow.pk), "model_name": "workflow"}


def test_every_write_endpoint_refuses_an_auditor(client, auditor, sample_values, workflow):
    client.force_login(auditor)
    tried = []
    for route, name in url_patterns():
        url = concrete(route, sample_values)
        if url is None or name in SKIPPED:
            continue
        before = database_fingerprint()
        response = client.post(url, {"reason": "auditor was here", "verdict": "approve", "justification": "x",
                                     "verdict_reason": "other", "category": "false_positive"})
        tried.append(url)
        assert response.status_code < 500, f"POST {url} failed with {response.status_code}"
        changed = [table for table, digest in database_fingerprint().items() if before.get(table) != digest]
        assert not changed, f"POST {url} by an auditor changed {changed}"
    assert "/workflows/refund-agent/pause/" in tried and len(tried) >= 8
    assert not Workflow.objects.get(pk=workflow.pk).paused


def test_auditor_cannot_pause_a_workflow_with_a_valid_form(client, auditor, workflow):
    client.force_login(auditor)
    before = AuditEvent.objects.count()
    response = client.post(reverse("governance:pause", args=[workflow.slug]), {"reason": "I would like to stop it"})
    assert response.status_code == 422
    assert not Workflow.objects.get(pk=workflow.pk).paused and AuditEvent.objects.count() == before


def test_auditor_pages_offer_no_write_controls(client, auditor, workflow, decision_log):
    client.force_login(auditor)
    for url in (reverse("governance:workflow_detail", args=[workflow.slug]), reverse("governance:audit_log"),
                reverse("governance:audit_event", args=[decision_log[0].seq])):
        page = client.get(url).content.decode()
        assert "Pause every dispatch" not in page and "Resume" not in page

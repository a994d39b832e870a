"""The interactive API docs work offline: served from our static files, under our CSP."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def test_docs_page_renders_every_operation_without_outside_requests(live_server, page):
    outside: list[str] = []
    problems: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(live_server.url) else None)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(f"{live_server.url}/api/v1/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = set(page.locator(".opblock-summary-path").all_inner_texts())
    assert {"/api/v1/dispatch", "/api/v1/approvals/{approval_id}", "/api/v1/signals", "/api/v1/proposals",
            "/api/v1/route", "/api/v1/context-tags", "/api/v1/workflows/{slug}/pause"} <= {p.strip() for p in paths}
    assert outside == []
    assert not [p for p in problems if "Content Security Policy" in p], problems

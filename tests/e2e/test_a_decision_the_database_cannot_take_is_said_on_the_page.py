"""A decision the database cannot take (another transaction holds the request past
DATABASE_LOCK_TIMEOUT_MS) answers 503; the page says so instead of silently doing nothing, nothing
is recorded, and the same click succeeds once the lock is gone."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.db import connections
from playwright.sync_api import expect

from approvals.models import ApprovalRequest, Decision
from audit.models import AuditEvent
from tests.e2e.conftest import FACTORY_PASSWORD, login
from tests.e2e.test_queue_approver_day import ask

pytestmark = pytest.mark.browser
LOCK_TIMEOUT_MS = int(settings.DATABASES["default"]["OPTIONS"]["options"].split("lock_timeout=")[1].split()[0])


def test_a_decision_blocked_by_a_held_lock_is_reported_and_can_be_retried(page, office, workflow):
    req = ask(office, workflow, "refund_locked")
    login(page, "alice", FACTORY_PASSWORD)
    page.goto(f"/approvals/{req.pk}/")
    events_before = AuditEvent.objects.count()

    holder = connections.create_connection("default")  # another session, e.g. a long report
    try:
        holder.set_autocommit(False)
        with holder.cursor() as cursor:
            cursor.execute("SELECT id FROM approvals_approvalrequest WHERE id = %s FOR UPDATE", [req.pk])
        page.click("#decision-panel button[value=approve]")
        alert = page.locator("#request-failed")
        expect(alert).to_be_visible(timeout=LOCK_TIMEOUT_MS + 10_000)
        expect(alert).to_contain_text("cannot reach its database or task queue")
        expect(page.locator("#decision-panel button[value=approve]")).to_be_visible()  # the form is still there
    finally:
        holder.rollback()
        holder.close()
    assert ApprovalRequest.objects.get(pk=req.pk).state == ApprovalRequest.State.PENDING
    assert not Decision.objects.filter(request=req).exists()
    assert AuditEvent.objects.count() == events_before

    page.click("#decision-panel button[value=approve]")
    expect(page.locator("#decision-panel")).to_contain_text("Approved by Alice at")
    expect(page.locator("#request-failed")).to_be_hidden()
    assert ApprovalRequest.objects.get(pk=req.pk).state == ApprovalRequest.State.APPROVED


@pytest.mark.django_db(transaction=True)
def test_a_page_that_cannot_reach_the_database_answers_503_saying_so(client, workflow, office):
    req = ask(office, workflow, "refund_locked_plain")
    client.force_login(office["alice"])
    holder = connections.create_connection("default")
    try:
        holder.set_autocommit(False)
        with holder.cursor() as cursor:
            cursor.execute("SELECT id FROM approvals_approvalrequest WHERE id = %s FOR UPDATE", [req.pk])
        response = client.post(f"/approvals/{req.pk}/decide/", {"verdict": "approve"})
    finally:
        holder.rollback()
        holder.close()
    assert response.status_code == 503 and response["Retry-After"]
    page = response.content.decode()
    assert "Ringfence cannot reach its database right now" in page and "may not have been saved" in page
    assert ApprovalRequest.objects.get(pk=req.pk).state == ApprovalRequest.State.PENDING

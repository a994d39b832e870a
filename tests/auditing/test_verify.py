"""The verify page's check of the database chain, run by a worker with its progress on the page.
(Uploaded files: test_verify_upload_is_a_capped_background_job.py.)"""

from __future__ import annotations

import pytest
from django.urls import reverse

from audit import jobs
from audit.models import AuditEvent

VERIFY = reverse("audit:verify")


@pytest.fixture
def auditor_client(client, auditor):
    client.force_login(auditor)
    return client


def test_chain_verification_reports_progress_and_its_result(auditor_client, auditor, decision_log):
    job = jobs.Progress("verify", "job1", auditor.pk, jobs.progress_store())
    job.save(state="queued", done=0, total=0)
    assert "Waiting for a worker" in auditor_client.get(
        reverse("audit:verify_job", args=["job1"])).content.decode()
    jobs.run_chain_verification("job1", auditor.pk)
    page = auditor_client.get(reverse("audit:verify_job", args=["job1"])).content.decode()
    assert "intact" in page and f"{AuditEvent.objects.count()} events checked" in page


def test_the_verify_page_shows_the_log_and_the_upload_limit(auditor_client, decision_log, settings):
    settings.AUDIT_VERIFY_MAX_UPLOAD_MB = 7
    page = auditor_client.get(VERIFY).content.decode()
    assert f"{AuditEvent.objects.count()} events" in page and "At most 7 MB" in page


def test_only_auditors_verify(client, approver, decision_log):
    client.force_login(approver)
    assert client.get(VERIFY).status_code == 403
    assert client.post(reverse("audit:verify_start")).status_code == 403

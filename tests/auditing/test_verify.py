from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from audit import views as auditing
from audit.models import AuditEvent

VERIFY = reverse("audit:verify")


@pytest.fixture
def auditor_client(client, auditor):
    client.force_login(auditor)
    return client


def export_text(client, **params) -> str:
    response = client.get(reverse("audit:export", args=["jsonl"]), params)
    return b"".join(response.streaming_content).decode()


def upload(client, text: str, kind: str = "chain"):
    return client.post(VERIFY, {"export": SimpleUploadedFile("export.jsonl", text.encode()), "kind": kind})


def test_untouched_whole_export_is_intact(auditor_client, decision_log):
    page = upload(auditor_client, export_text(auditor_client)).content.decode()
    assert "intact" in page and f"OK: {AuditEvent.objects.count()} events" in page


def test_tampered_export_names_the_first_broken_event(auditor_client, decision_log):
    text = export_text(auditor_client).replace("Abuse confirmed by two reports.", "Abuse suspected.")
    response = upload(auditor_client, text)
    assert response.status_code == 200
    page = response.content.decode()
    assert f"BROKEN at event #{decision_log[3].seq}:" in page and "was altered" in page
    assert f'href="/audit/events/{decision_log[3].seq}/"' in page


def test_export_with_a_deleted_event_names_the_gap(auditor_client, decision_log):
    lines = export_text(auditor_client).splitlines()
    del lines[decision_log[2].seq - 1]
    page = upload(auditor_client, "\n".join(lines)).content.decode()
    assert f"BROKEN at event #{decision_log[2].seq}:" in page and "is missing" in page


def test_search_excerpt_is_matched_against_the_database(auditor_client, decision_log, other_workflow):
    excerpt = export_text(auditor_client, workflow=other_workflow.slug)
    page = upload(auditor_client, excerpt, "excerpt").content.decode()
    assert "intact" in page and "an excerpt: each event in it is on the chain" in page
    assert "BROKEN at event #1:" in upload(auditor_client, excerpt, "chain").content.decode()

    forged = [json.loads(line) for line in excerpt.splitlines()]
    event = next(line for line in forged if line.get("seq") == decision_log[4].seq)
    event["event"]["reason"] = "escalated by hand"
    page = upload(auditor_client, "\n".join(json.dumps(line) for line in forged), "excerpt").content.decode()
    assert f"BROKEN at event #{decision_log[4].seq}:" in page


def test_a_file_that_is_not_an_export_is_refused_with_the_line(auditor_client, decision_log):
    response = upload(auditor_client, '{"type": "event", "seq": 1}\n')
    assert response.status_code == 422
    assert "not a Ringfence audit export: line 1" in response.content.decode()


def test_chain_verification_reports_progress_and_its_result(auditor_client, auditor, decision_log):
    job = auditing.Progress("verify", "job1", auditor.pk, auditing.progress_store())
    job.save(state="queued", done=0, total=0)
    assert "Waiting for a worker" in auditor_client.get(
        reverse("audit:verify_job", args=["job1"])).content.decode()
    auditing.run_chain_verification("job1", auditor.pk)
    page = auditor_client.get(reverse("audit:verify_job", args=["job1"])).content.decode()
    assert "intact" in page and f"{AuditEvent.objects.count()} events checked" in page


def test_only_auditors_verify(client, approver, decision_log):
    client.force_login(approver)
    assert client.get(VERIFY).status_code == 403
    assert client.post(reverse("audit:verify_start")).status_code == 403

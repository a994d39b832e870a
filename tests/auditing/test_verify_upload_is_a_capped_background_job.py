"""The verify page takes an export file up to AUDIT_VERIFY_MAX_UPLOAD_MB, keeps it in the database
and has a worker check it while the page shows the progress, then the verdict; a file over the cap
is refused with a message a person can act on, and nothing of it is kept."""

from __future__ import annotations

import json
import re

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.test import Client
from django.urls import reverse

from audit import jobs, sequencing
from audit import log as audit
from audit import verify_audit as tlog
from audit.models import AuditEvent, VerifyUpload, VerifyUploadChunk
from tests import factories
from tests.support.celery_processes import celery_processes

VERIFY = reverse("audit:verify")


@pytest.fixture
def auditor_client(client, auditor):
    client.force_login(auditor)
    return client


@pytest.fixture
def signed_log(decision_log):
    """The decision log with the signed checkpoint the sequencer would have written by now."""
    sequencing.sign_tree_head()
    return decision_log


def export_text(client, **params) -> str:
    response = client.get(reverse("audit:export", args=["jsonl"]), params)
    return b"".join(response.streaming_content).decode()


def upload(client, data: bytes | str, kind: str = "chain", name: str = "export.jsonl"):
    raw = data.encode() if isinstance(data, str) else data
    return client.post(VERIFY, {"kind": kind, "export": SimpleUploadedFile(name, raw)})


def job_of(response) -> str:
    assert response.status_code == 302, response.content.decode()[:500]
    match = re.fullmatch(r"/audit/verify/chain/([0-9a-f]{32})/", response["Location"])
    assert match, response["Location"]
    return match[1]


def job_page(client, job: str) -> str:
    response = client.get(reverse("audit:verify_job", args=[job]))
    assert response.status_code == 200
    return response.content.decode()


def checked(client, data: bytes | str, kind: str = "chain") -> str:
    """Upload, run the job as the worker does, and read the verdict on the job's page."""
    job = job_of(upload(client, data, kind))
    assert jobs.run_upload_verification(str(VerifyUpload.objects.get(pk=job).pk)) in ("intact", "broken", "unusable")
    return job_page(client, job)


def nothing_stored() -> bool:
    return not VerifyUpload.objects.exists() and not VerifyUploadChunk.objects.exists()


def test_an_upload_is_stored_then_checked_by_the_worker_and_the_page_shows_the_verdict(auditor_client, signed_log):
    text = export_text(auditor_client)
    job = job_of(upload(auditor_client, text))
    stored = VerifyUpload.objects.get(pk=job)
    assert stored.size == len(text.encode()) and stored.chunks.count() == 1
    page = job_page(auditor_client, job)
    assert "Waiting for a worker" in page and "export.jsonl" in page and stored.sha256 in page

    assert jobs.run_upload_verification(str(stored.pk)) == "intact"
    page = job_page(auditor_client, job)
    assert "intact" in page and f"OK: {AuditEvent.objects.count()} events" in page
    assert "1 signed tree head verified" in page
    assert nothing_stored(), "the file is dropped once checked"
    assert jobs.run_upload_verification(str(stored.pk)) == "gone", "a redelivered message finds nothing to do"


def test_a_tampered_upload_names_the_first_broken_event(auditor_client, signed_log):
    text = export_text(auditor_client).replace("Abuse confirmed by two reports.", "Abuse suspected.")
    page = checked(auditor_client, text)
    assert f"BROKEN at event #{signed_log[3].seq}:" in page and "was altered" in page
    assert f'href="/audit/events/{signed_log[3].seq}/"' in page


def test_an_upload_with_a_deleted_event_names_the_gap(auditor_client, signed_log):
    lines = export_text(auditor_client).splitlines()
    del lines[signed_log[2].seq - 1]
    page = checked(auditor_client, "\n".join(lines) + "\n")
    assert f"BROKEN at event #{signed_log[2].seq}:" in page and "is missing" in page


def test_an_excerpt_is_matched_against_the_database(auditor_client, signed_log, other_workflow):
    excerpt = export_text(auditor_client, workflow=other_workflow.slug)
    assert '"type": "tlog_checkpoint"' in excerpt
    page = checked(auditor_client, excerpt, "excerpt")
    assert "intact" in page and "an excerpt: each event in it is on the chain" in page
    assert "1 signed tree head verified" in page
    assert "BROKEN at event #1:" in checked(auditor_client, excerpt, "chain")

    lines = [json.loads(line) for line in excerpt.splitlines()]
    event = next(line for line in lines if line.get("seq") == signed_log[4].seq)
    event["event"]["reason"] = "escalated by hand"
    forged = "\n".join(json.dumps(line) for line in lines) + "\n"
    assert f"BROKEN at event #{signed_log[4].seq}:" in checked(auditor_client, forged, "excerpt")


def test_an_excerpts_signed_checkpoint_must_be_this_logs(auditor_client, signed_log, workflow):
    excerpt = export_text(auditor_client, workflow=workflow.slug)
    note_line = next(line for line in excerpt.splitlines() if '"tlog_checkpoint"' in line)
    note = json.loads(note_line)["note"]
    _, size, _ = tlog.parse_checkpoint(tlog.split_note(note)[0])

    with transaction.atomic():  # the log grows: a newer checkpoint of it vouches for the same events
        audit.record("system:test", "test.more", workflow)
    newer = sequencing.tree_head_line(sequencing.sign_tree_head())
    assert "intact" in checked(auditor_client, excerpt.replace(note_line, newer), "excerpt")

    altered = json.dumps({"type": "tlog_checkpoint", "note": note.replace(f"\n{size}\n", f"\n{size - 1}\n", 1)})
    page = checked(auditor_client, excerpt.replace(note_line, altered), "excerpt")
    assert "broken" in page and "is not a checkpoint signed with this log&#x27;s key (invalid signature" in page

    origin = settings.AUDIT_LOG_ORIGIN  # signed with the log's own key, over a tree this log never had
    made_up = tlog.sign_note(tlog.checkpoint_body(origin, size, bytes(32)), origin, sequencing.signing_seed())
    made_up_line = json.dumps({"type": "tlog_checkpoint", "note": made_up})
    page = checked(auditor_client, excerpt.replace(note_line, made_up_line), "excerpt")
    assert "broken" in page and "is not a checkpoint of the log in this database" in page


def test_a_file_that_is_not_an_export_gets_the_line_and_its_problem(auditor_client, signed_log):
    page = checked(auditor_client, '{"type": "event", "seq": 1}\n')
    assert "This is not a Ringfence audit export: line 1: prev_hash is missing." in page
    assert "intact" not in page


def test_an_upload_over_the_cap_is_refused_by_its_length_and_nothing_is_kept(auditor_client, settings, signed_log):
    settings.AUDIT_VERIFY_MAX_UPLOAD_MB = 1
    response = upload(auditor_client, b"x" * ((1 << 20) + (200 << 10)))
    assert response.status_code == 413
    page = response.content.decode()
    assert "This file is larger than 1 MB, the most the verify page takes" in page
    assert "Nothing was uploaded or kept" in page and "standalone script" in page
    assert nothing_stored()


def test_a_file_just_over_the_cap_is_stopped_as_it_streams_and_nothing_is_kept(auditor_client, settings, signed_log):
    settings.AUDIT_VERIFY_MAX_UPLOAD_MB = 1
    response = upload(auditor_client, b"x" * ((1 << 20) + 1))  # within the framing allowance of Content-Length
    assert response.status_code == 413 and "larger than 1 MB" in response.content.decode()
    assert nothing_stored()

    at_the_cap = upload(auditor_client, b"y" * (1 << 20))
    assert VerifyUpload.objects.get(pk=job_of(at_the_cap)).size == 1 << 20


def test_an_upload_without_a_file_is_a_form_error(auditor_client, signed_log):
    response = auditor_client.post(VERIFY, {"kind": "chain"})
    assert response.status_code == 422 and "This field is required." in response.content.decode()
    assert nothing_stored()


def test_only_auditors_upload_and_only_the_uploader_reads_the_verdict(client, approver, auditor, admin_user,
                                                                     signed_log):
    client.force_login(approver)
    assert upload(client, "{}\n").status_code == 403 and nothing_stored()

    client.force_login(auditor)
    job = job_of(upload(client, export_text(client)))
    other = Client()
    other.force_login(admin_user)  # an administrator who is no auditor
    assert other.get(reverse("audit:verify_job", args=[job])).status_code == 403
    superuser = Client()
    superuser.force_login(factories.make_user("root", is_superuser=True))  # reads everything, yet not this job
    assert superuser.get(reverse("audit:verify_job", args=[job])).status_code == 404


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_checks_the_upload_while_the_page_shows_progress(auditor, decision_log):
    sequencing.sign_tree_head()
    client = Client()
    client.force_login(auditor)
    text = export_text(client)
    with celery_processes(beat=False, concurrency=1) as celery:
        job = job_of(upload(client, text))
        assert celery.wait_for_task("audit.tasks.verify_audit_upload", timeout=45) == ["intact"]
    page = job_page(client, job)
    assert "intact" in page and f"OK: {AuditEvent.objects.count()} events" in page
    assert nothing_stored()

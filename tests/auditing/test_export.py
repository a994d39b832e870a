from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

import audit.verify_audit
from audit import log as audit_log
from audit import sequencing
from audit.models import AuditCheckpoint, AuditEvent, AuditTreeHead
from audit.verify_audit import sign_checkpoint

SCRIPT = Path(audit.verify_audit.__file__)


def download(client, fmt: str, **params) -> tuple[str, object]:
    response = client.get(reverse("audit:export", args=[fmt]), params)
    assert response.status_code == 200 and response.streaming
    assert "attachment" in response["Content-Disposition"]
    return b"".join(response.streaming_content).decode("utf-8"), response


def run_verifier(path: Path) -> subprocess.CompletedProcess:
    """The standalone script, as an auditor runs it on another machine: a copy of the one file, the
    system's Python (no virtualenv, no project on the path), the key from a file."""
    key_file = path.parent / "checkpoint.key"
    key_file.write_text(settings.AUDIT_CHECKPOINT_KEY)
    script = shutil.copy(SCRIPT, path.parent / "verify_audit.py")
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    return subprocess.run([python, "-I", script, str(path), "--key-file", str(key_file)],
                          capture_output=True, text=True, timeout=60, env={}, cwd=path.parent)


@pytest.fixture
def auditor_client(client, auditor):
    client.force_login(auditor)
    return client


@pytest.fixture
def signed_log(decision_log):
    """The decision log with the HMAC checkpoint beat writes hourly and the tree head the sequencer
    signs within seconds: what an export ends with (it signs nothing itself)."""
    audit_log.write_checkpoint("interval")
    sequencing.sign_tree_head()
    return decision_log


def test_jsonl_export_round_trip_equals_the_database(auditor_client, signed_log):
    text, response = download(auditor_client, "jsonl")
    lines = [json.loads(line) for line in text.splitlines()]
    events, checkpoint, tree_head = lines[:-2], lines[-2], lines[-1]
    stored = list(AuditEvent.objects.order_by("seq").values("seq", "prev_hash", "hash", "canonical"))
    assert [(e["seq"], e["prev_hash"], e["hash"], e["event"]) for e in events] == [
        (s["seq"], s["prev_hash"], s["hash"], json.loads(s["canonical"])) for s in stored]
    cp = AuditCheckpoint.objects.get()
    assert checkpoint == {"type": "checkpoint", "seq": stored[-1]["seq"], "hash": stored[-1]["hash"],
                          "at": checkpoint["at"], "signature": cp.signature}
    assert cp.signature == sign_checkpoint(settings.AUDIT_CHECKPOINT_KEY, cp.head_seq, cp.head_hash, checkpoint["at"])
    assert tree_head == {"type": "tlog_checkpoint", "note": AuditTreeHead.objects.get().note}
    assert response["X-Ringfence-Checkpoint-Seq"] == str(stored[-1]["seq"])


def test_csv_export_round_trip_equals_the_database(auditor_client, signed_log):
    text, _ = download(auditor_client, "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    events, checkpoint, tree_head = rows[:-2], rows[-2], rows[-1]
    stored = list(AuditEvent.objects.order_by("seq"))
    assert len(events) == len(stored)
    for row, event in zip(events, stored, strict=True):
        payload = json.loads(row["canonical"])
        assert row["canonical"] == event.canonical and row["hash"] == event.hash and row["prev_hash"] == event.prev_hash
        assert (int(row["seq"]), row["actor"], row["action"], row["workflow"], row["reason"]) == (
            event.seq, event.actor_label, event.action, event.workflow_slug, event.reason)
        assert row["at"] == payload["at"] and json.loads(row["data"]) == event.data
        assert (row["subject_type"], row["subject_id"]) == (event.subject_type, event.subject_id)
    assert checkpoint["type"] == "checkpoint" and int(checkpoint["seq"]) == stored[-1].seq
    assert checkpoint["hash"] == stored[-1].hash and len(checkpoint["signature"]) == 64
    assert tree_head["type"] == "tlog_checkpoint" and int(tree_head["seq"]) == stored[-1].seq
    assert tree_head["signature"] == AuditTreeHead.objects.get().note


def test_whole_chain_export_verifies_offline_and_a_tampered_copy_names_the_event(auditor_client, signed_log,
                                                                                  tmp_path):
    text, _ = download(auditor_client, "jsonl")
    export = tmp_path / "export.jsonl"
    export.write_text(text)
    result = run_verifier(export)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK: ") and "1 checkpoint(s) verified" in result.stdout

    target = signed_log[1]
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text(text.replace("Amount above the policy limit.", "Amount within the policy limit."))
    result = run_verifier(tampered)
    assert result.returncode == 1
    assert result.stdout.startswith(f"BROKEN at event #{target.seq}:")


def test_search_export_holds_only_the_matching_events(auditor_client, signed_log, other_workflow):
    text, response = download(auditor_client, "jsonl", workflow=other_workflow.slug)
    lines = [json.loads(line) for line in text.splitlines()]
    expected = list(AuditEvent.objects.filter(workflow_slug=other_workflow.slug).order_by("seq")
                    .values_list("seq", flat=True))
    assert [line["seq"] for line in lines if line["type"] == "event"] == expected
    assert lines[-1]["type"] == "tlog_checkpoint"
    assert "ringfence-audit-search-" in response["Content-Disposition"]


def test_an_approvers_export_stays_in_their_scope(client, approver, decision_log, workflow):
    client.force_login(approver)
    text, _ = download(client, "csv")
    workflows = {row["workflow"] for row in csv.DictReader(io.StringIO(text)) if row["type"] == "event"}
    assert workflows == {workflow.slug}


def test_export_reports_its_progress_to_its_owner(auditor_client, auditor, approver, client, decision_log):
    download(auditor_client, "jsonl", progress="tok123")
    page = auditor_client.get(reverse("audit:export_progress", args=["tok123"])).content.decode()
    total = AuditEvent.objects.count()
    assert f"Export finished: {total} events" in page
    client.force_login(approver)
    assert "Export finished" not in client.get(
        reverse("audit:export_progress", args=["tok123"])).content.decode()


def test_unknown_export_format_is_not_found(auditor_client, decision_log):
    assert auditor_client.get(reverse("audit:export", args=["xml"])).status_code == 404


@pytest.mark.parametrize("reason", ["=HYPERLINK(\"http://evil.example\",\"x\")", "+1+1", "-2", "@SUM(A1)",
                                    "\tcmd", "\rcmd"])
def test_a_formula_in_a_csv_cell_reaches_the_spreadsheet_as_text_while_canonical_stays_exact(auditor_client,
                                                                                             workflow, reason):
    from django.db import transaction

    from audit import log as audit_log

    with transaction.atomic():
        audit_log.record("system:test", "test.formula", workflow, reason=reason)
    text, _ = download(auditor_client, "csv")
    row = next(r for r in csv.DictReader(io.StringIO(text)) if r["action"] == "test.formula")
    assert row["reason"] == "'" + reason
    assert json.loads(row["canonical"])["reason"] == reason
    event = AuditEvent.objects.get(action="test.formula")
    assert row["canonical"] == event.canonical and row["hash"] == event.hash

"""Reading never writes: an export (any number, by anyone) signs nothing and ends with the newest
checkpoint already written; only an auditor's POST signs one now, audited, at most once per
CHECKPOINT_COOLDOWN_SECONDS (429 with Retry-After). Someone who is no auditor exports the events
of their workflows with no checkpoint, which would tell them the size of the whole log."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.db import transaction
from django.urls import reverse

from audit import log as audit
from audit import sequencing
from audit import verify_audit as tlog
from audit import views as desk
from audit.models import AuditCheckpoint, AuditEntry, AuditEvent, AuditTreeHead

SIGN = reverse("audit:sign_checkpoint")


def written() -> tuple[int, int, int, int]:
    return (AuditTreeHead.objects.count(), AuditCheckpoint.objects.count(), AuditEntry.objects.count(),
            AuditEvent.objects.count())


def download(client, fmt: str = "jsonl", **params):
    response = client.get(reverse("audit:export", args=[fmt]), params)
    assert response.status_code == 200
    return b"".join(response.streaming_content).decode(), response


@pytest.fixture(autouse=True)
def _forget_cooldowns(db):
    """The cache outlives a test: its people's checkpoint requests are forgotten after it."""
    yield
    caches["default"].delete_many([desk.cooldown_key(pk) for pk in get_user_model().objects.values_list("pk",
                                                                                                      flat=True)])


@pytest.fixture
def auditor_client(client, auditor):
    client.force_login(auditor)
    return client


def test_exports_write_nothing_however_many_and_by_whom(auditor_client, client, approver, decision_log):
    sequencing.sign_tree_head()
    before = written()
    for _ in range(10):
        download(auditor_client)
        download(auditor_client, "csv")
    other = type(client)()
    other.force_login(approver)
    for _ in range(5):
        download(other, "csv")
    assert written() == before


def test_an_export_ends_with_the_newest_checkpoint_already_written(auditor_client, decision_log, workflow):
    signed = sequencing.sign_tree_head()
    with transaction.atomic():  # an event the sequencer has not signed a checkpoint for yet
        audit.record("system:test", "test.after_the_checkpoint", workflow)
    text, response = download(auditor_client)
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["seq"] for line in lines[:-1]] == list(range(1, signed.tree_size + 1))
    assert lines[-1] == {"type": "tlog_checkpoint", "note": signed.note}
    assert response["X-Ringfence-Checkpoint-Seq"] == str(signed.tree_size)
    assert f"-to-{signed.tree_size}.jsonl" in response["Content-Disposition"]
    _, size, root = tlog.open_checkpoint(lines[-1]["note"], sequencing.vkey())
    assert size == signed.tree_size and root.hex() == signed.root_hash

    rows = list(csv.DictReader(io.StringIO(download(auditor_client, "csv")[0])))
    assert rows[-1]["type"] == "tlog_checkpoint" and rows[-1]["signature"] == signed.note
    assert int(rows[-1]["seq"]) == signed.tree_size and rows[-1]["hash"] == signed.root_hash
    assert len(rows) == signed.tree_size + 1


def test_an_hmac_checkpoint_stands_right_after_the_event_it_signs(auditor_client, decision_log, workflow):
    cp = audit.write_checkpoint("interval")  # beat's hourly heartbeat
    with transaction.atomic():
        audit.record("system:test", "test.later", workflow)
    signed = sequencing.sign_tree_head()
    lines = [json.loads(line) for line in download(auditor_client)[0].splitlines()]
    kinds = [(line["type"], line.get("seq")) for line in lines]
    at = kinds.index(("checkpoint", cp.head_seq))
    assert kinds[at - 1] == ("event", cp.head_seq) and kinds[-1] == ("tlog_checkpoint", None)
    assert lines[-2]["seq"] == signed.tree_size


def test_someone_who_is_no_auditor_exports_no_checkpoint_and_no_log_size(client, approver, decision_log, workflow):
    signed = sequencing.sign_tree_head()
    client.force_login(approver)
    text, response = download(client)
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines and {line["type"] for line in lines} == {"event"}
    assert {line["event"]["workflow"] for line in lines} == {workflow.slug}
    assert "X-Ringfence-Checkpoint-Seq" not in response
    name = response["Content-Disposition"]
    assert re.fullmatch(r'attachment; filename="ringfence-audit-search-[0-9TZ]+\.jsonl"', name), name  # no "-to-<size>"
    page = client.get(reverse("audit:log")).content.decode()
    assert "Sign a checkpoint now" not in page and f"a tree of {signed.tree_size}" not in page


def test_an_auditors_post_signs_one_checkpoint_and_audits_who_asked(auditor_client, auditor, decision_log):
    page = auditor_client.get(reverse("audit:log")).content.decode()
    assert "Sign a checkpoint now" in page and "none is signed yet" in page
    heads, hmacs, entries, events = written()
    response = auditor_client.post(SIGN, {"query": "workflow=refund-agent"})
    assert response.status_code == 302 and response["Location"] == reverse("audit:log") + "?workflow=refund-agent"
    assert AuditTreeHead.objects.count() == heads + 1 and AuditCheckpoint.objects.count() == hmacs
    signed = AuditTreeHead.objects.latest("id")
    assert signed.tree_size == events  # the log as it stood; its own record comes after
    event = AuditEvent.objects.get(action="audit.checkpoint_signed")
    assert (event.actor_kind, event.actor_label, event.subject_type, event.subject_id) == (
        "user", auditor.username, "audit.audittreehead", str(signed.pk))
    assert event.data == {"tree_size": signed.tree_size, "root": signed.root_hash}
    page = auditor_client.get(response["Location"]).content.decode()
    assert f"Signed a checkpoint of the log&#x27;s {signed.tree_size} events" in page

    text, _ = download(auditor_client)
    assert json.loads(text.splitlines()[-1]) == {"type": "tlog_checkpoint", "note": signed.note}


def test_a_second_post_within_the_cooldown_is_429_with_retry_after_and_writes_nothing(auditor_client, decision_log):
    assert auditor_client.post(SIGN).status_code == 302
    before = written()
    response = auditor_client.post(SIGN)
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= desk.CHECKPOINT_COOLDOWN_SECONDS
    assert "ask again in" in response.content.decode()
    assert written() == before


def test_the_cooldown_is_per_person(client, auditor, decision_log):
    from django.test import Client

    from governance.permissions import Role
    from tests import factories

    first, second = Client(), Client()
    first.force_login(auditor)
    second.force_login(factories.make_user("audra", role=Role.AUDITOR))
    assert first.post(SIGN).status_code == 302
    assert second.post(SIGN).status_code == 302
    assert first.post(SIGN).status_code == 429


def test_someone_who_is_no_auditor_cannot_sign(client, approver, admin_user, decision_log):
    before = written()
    for person in (approver, admin_user):
        client.force_login(person)
        assert client.post(SIGN).status_code == 403
    assert written() == before


def test_signing_needs_a_post(auditor_client, decision_log):
    before = written()
    assert auditor_client.get(SIGN).status_code == 405
    assert written() == before

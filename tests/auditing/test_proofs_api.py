"""The transparency log's API: an auditor (or a token holding `audit`) proves any decision with an
inclusion proof against a signed checkpoint and the log's honesty over time with a consistency
proof, holding only the public key; everyone else is refused and bad parameters are named."""

from __future__ import annotations

import base64
import hashlib

import pytest
from django.db import transaction
from django.test import Client

from audit import log as audit
from audit import sequencing
from audit import verify_audit as tlog
from governance import services
from tests import factories
from tests.api.conftest import issue

pytestmark = pytest.mark.django_db


def _leaf(raw: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + raw).digest()


def _record(n: int, workflow) -> None:
    for i in range(n):
        with transaction.atomic():
            audit.record("proof-test", "test.proved", workflow, data={"i": i})


@pytest.fixture
def auditor_client(auditor) -> Client:
    client = Client()
    client.force_login(auditor)
    return client


def _signed(client: Client) -> tuple[str, int, bytes]:
    """The latest checkpoint checked with nothing but the public key: (vkey, size, root)."""
    key = client.get("/api/v1/audit/public-key").json()
    assert base64.b64decode(key["public_key"]) == sequencing.public_key()
    note = client.get("/api/v1/audit/checkpoint")
    assert note.status_code == 200 and note["Content-Type"].startswith("text/plain")
    body = tlog.open_note(note.content.decode(), key["vkey"])
    origin, size, root = tlog.parse_checkpoint(body)
    assert origin == key["name"]
    return key["vkey"], size, root


def test_every_leaf_is_proved_against_a_signed_checkpoint_and_checkpoints_are_consistent(auditor_client, workflow):
    _record(5, workflow)
    sequencing.sign_tree_head()
    _, first_size, first_root = _signed(auditor_client)
    _record(9, workflow)
    sequencing.sign_tree_head()
    _, size, root = _signed(auditor_client)
    assert size == first_size + 9

    for index in range(size):
        entry = auditor_client.get(f"/api/v1/audit/entries/{index}").json()
        assert entry["index"] == index and entry["seq"] == index + 1
        answer = auditor_client.get(f"/api/v1/audit/proof/inclusion?index={index}&tree_size={size}").json()
        proof = [base64.b64decode(h) for h in answer["proof"]]
        assert answer["leaf_index"] == index and answer["tree_size"] == size
        assert tlog.verify_inclusion(_leaf(base64.b64decode(entry["leaf"])), index, size, proof, root)
        assert not tlog.verify_inclusion(_leaf(base64.b64decode(entry["leaf"]) + b" "), index, size, proof, root)

    answer = auditor_client.get(f"/api/v1/audit/proof/consistency?first={first_size}&second={size}").json()
    proof = [base64.b64decode(h) for h in answer["proof"]]
    assert tlog.verify_consistency(first_size, size, first_root, root, proof)
    forged = hashlib.sha256(b"another history").digest()
    assert not tlog.verify_consistency(first_size, size, forged, root, proof)


def test_a_token_needs_the_audit_permission_and_people_need_to_read_everything(workflow, admin_user, approver):
    _record(2, workflow)
    sequencing.sign_tree_head()
    account = factories.make_service_account("proof-bot", owner=approver, workflows=[workflow])
    bot = Client(headers={"Authorization": f"Bearer {issue(account)}"})
    refused = bot.get("/api/v1/audit/checkpoint")
    assert refused.status_code == 403 and "audit permission" in refused.json()["detail"]
    services.update_service_account(account.pk, actor=admin_user, permissions=["audit"])
    assert bot.get("/api/v1/audit/checkpoint").status_code == 200
    assert bot.get("/api/v1/audit/proof/inclusion?index=0&tree_size=2").status_code == 200

    person = Client()
    person.force_login(approver)
    assert person.get("/api/v1/audit/public-key").status_code == 403
    assert Client().get("/api/v1/audit/checkpoint").status_code == 401


@pytest.mark.parametrize("query", ["index=5&tree_size=5", "index=0&tree_size=99", "index=-1&tree_size=3",
                                   "index=x&tree_size=3", "tree_size=3"])
def test_a_bad_inclusion_query_is_named_and_answers_no_proof(auditor_client, workflow, query):
    _record(5, workflow)
    answer = auditor_client.get(f"/api/v1/audit/proof/inclusion?{query}")
    assert answer.status_code in (400, 422)
    assert answer["Content-Type"].startswith("application/problem+json")
    assert "proof" not in answer.json()


def test_the_evidence_bundle_carries_proofs_that_verify_with_the_public_key_alone(workflow, approver):
    from approvals import services as approvals
    from approvals.evidence import evidence_bundle

    agent = factories.make_service_account("refund-bot", owner=factories.make_user("owen"), workflows=[workflow])
    req = approvals.create_request(workflow=workflow, kind="agent_action", action="refund_customer",
                                   parameters={"order": "A-1001"}, requester=agent)
    approvals.record_decision(req.pk, actor=approver, verdict="approve", justification="Refund is due.")
    unproved = evidence_bundle(type(req).objects.get(pk=req.pk))["audit"]
    assert unproved["not_yet_under_a_checkpoint"], "no checkpoint signed yet, yet the bundle claims proofs"
    sequencing.sign_tree_head()
    bundle = evidence_bundle(type(req).objects.get(pk=req.pk))
    assert bundle["version"] == 3
    part = bundle["audit"]
    body = tlog.open_note(part["checkpoint_note"], part["public_key"])
    _, size, root = tlog.parse_checkpoint(body)
    assert len(part["proofs"]) == len(part["events"]) >= 2 and not part["not_yet_under_a_checkpoint"]
    canonical = {e["seq"]: e["canonical"] for e in part["events"]}
    for proved in part["proofs"]:
        proof = [base64.b64decode(h) for h in proved["proof"]]
        assert proved["tree_size"] == size
        assert tlog.verify_inclusion(_leaf(canonical[proved["seq"]].encode()), proved["index"], size, proof, root)


def test_a_whole_log_export_and_a_bundle_verify_offline_with_the_public_key(tmp_path, client, auditor, workflow,
                                                                            approver):
    import json
    import subprocess
    import sys

    from django.conf import settings

    from approvals import services as approvals
    from approvals.evidence import evidence_bundle
    from tests.governance.support import VERIFIER

    _record(7, workflow)
    agent = factories.make_service_account("refund-bot", owner=factories.make_user("owen"), workflows=[workflow])
    req = approvals.create_request(workflow=workflow, kind="agent_action", action="refund_customer",
                                   parameters={"order": "A-1001"}, requester=agent)
    approvals.record_decision(req.pk, actor=approver, verdict="approve", justification="Refund is due.")
    sequencing.sign_tree_head()
    client.force_login(auditor)
    export = tmp_path / "log.jsonl"
    export.write_bytes(b"".join(client.get("/audit/export.jsonl").streaming_content))
    assert '"type": "tlog_checkpoint"' in export.read_text()
    key_file = tmp_path / "checkpoint.key"
    key_file.write_text(settings.AUDIT_CHECKPOINT_KEY)
    vkey = sequencing.vkey()

    def verifier(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(VERIFIER), *args], capture_output=True, text=True, timeout=60)

    ok = verifier(str(export), "--key-file", str(key_file), "--public-key", vkey)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps(evidence_bundle(type(req).objects.get(pk=req.pk)), default=str))
    proved = verifier("--bundle", str(bundle), "--public-key", vkey)
    assert proved.returncode == 0, proved.stdout + proved.stderr

    other = tlog.note_vkey(settings.AUDIT_LOG_ORIGIN, bytes(32))  # a key that signed nothing here
    refused = verifier("--bundle", str(bundle), "--public-key", other)
    assert refused.returncode in (1, 2) and refused.returncode != 0

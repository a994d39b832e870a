"""The transparency log for auditors and their tools: the latest signed checkpoint, the public key
that verifies it, any entry as its exact leaf bytes, and RFC 9162 inclusion and consistency proofs.

Open to auditors signed in (people who read every workflow) and to tokens whose service account holds
the `audit` permission. Everything here is read-only.
"""

from __future__ import annotations

import base64
from typing import Annotated

from django.http import HttpRequest, HttpResponse
from ninja import Query, Router, Schema
from pydantic import Field

from audit import sequencing
from audit.models import AuditEvent
from core.problems import Problem
from governance import selectors
from governance.api_auth import TOKEN_OR_SESSION, require_account_permission, service_account_of

router = Router(tags=["audit"], auth=TOKEN_OR_SESSION)
MAX_INDEX = 2**62


def _require_audit_reader(request: HttpRequest) -> None:
    account = service_account_of(request)
    if account is not None:
        require_account_permission(account, "audit")
        return
    if not selectors.reads_everything(request.auth):
        raise Problem(403, "forbidden", "Only auditors read the audit log's proofs.")


def _size() -> int:
    return sequencing.head().size


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@router.get("/audit/checkpoint", summary="The latest signed checkpoint (C2SP tlog-checkpoint, signed note)",
            response={200: str})
def checkpoint(request: HttpRequest) -> HttpResponse:
    """`text/plain`: origin, tree size, base64 root hash, a blank line, then the Ed25519 signature line."""
    _require_audit_reader(request)
    signed = sequencing.latest_tree_head()
    if signed is None:
        raise Problem(404, "not_found", "No checkpoint has been signed yet; one follows within seconds.")
    return HttpResponse(signed.note, content_type="text/plain; charset=utf-8")


class PublicKeyOut(Schema):
    name: str = Field(description="The log's origin, also the signature's key name.")
    key_id: str = Field(description="The 4-byte key id, hex.")
    public_key: str = Field(description="The 32-byte Ed25519 public key, base64.")
    vkey: str = Field(description="The note verifier key: name+hexid+base64(0x01‖key).")


@router.get("/audit/public-key", response=PublicKeyOut, summary="The key that verifies the checkpoints")
def public_key(request: HttpRequest) -> PublicKeyOut:
    _require_audit_reader(request)
    vkey = sequencing.vkey()
    name, key_id, _ = vkey.split("+", 2)  # a name holds no "+"; base64 may
    return PublicKeyOut(name=name, key_id=key_id, public_key=_b64(sequencing.public_key()), vkey=vkey)


class EntryOut(Schema):
    index: int = Field(description="The leaf index (seq - 1).")
    leaf: str = Field(description="The exact leaf bytes (the event's canonical JSON), base64.")
    seq: int
    occurred_at: str
    action: str
    actor: str
    subject_type: str
    subject_id: str
    workflow: str
    reason: str
    hash: str = Field(description="The event's link in the hash chain.")


@router.get("/audit/entries/{index}", response=EntryOut, summary="One leaf of the log")
def entry(request: HttpRequest, index: int) -> EntryOut:
    _require_audit_reader(request)
    if not 0 <= index < MAX_INDEX:
        raise Problem(422, "invalid", "index is a leaf index from 0.")
    event = AuditEvent.objects.filter(seq=index + 1).first()
    if event is None:
        raise Problem(404, "not_found", f"The log has no leaf {index} (it has {_size()}).")
    return EntryOut(index=index, leaf=_b64(event.canonical.encode("utf-8")), seq=event.seq,
                    occurred_at=event.occurred_at.isoformat(), action=event.action, actor=event.actor_label,
                    subject_type=event.subject_type, subject_id=event.subject_id, workflow=event.workflow_slug,
                    reason=event.reason, hash=event.hash)


class InclusionOut(Schema):
    leaf_index: int
    tree_size: int
    proof: list[str] = Field(description="Base64 hashes, in RFC 9162 order (leaf to root).")


@router.get("/audit/proof/inclusion", response=InclusionOut, summary="Proof that a leaf is in the tree of a size")
def inclusion(request: HttpRequest, index: Annotated[int, Query(ge=0, lt=MAX_INDEX)],
              tree_size: Annotated[int, Query(ge=1, lt=MAX_INDEX)]) -> InclusionOut:
    _require_audit_reader(request)
    size = _size()
    if tree_size > size:
        raise Problem(422, "invalid", f"tree_size {tree_size} is beyond the log's {size} leaves.")
    if index >= tree_size:
        raise Problem(422, "invalid", f"index {index} is not a leaf of a tree of {tree_size}.")
    proof = sequencing.inclusion_proof(index, tree_size)
    return InclusionOut(leaf_index=index, tree_size=tree_size, proof=[_b64(h) for h in proof])


class ConsistencyOut(Schema):
    first: int
    second: int
    proof: list[str] = Field(description="Base64 hashes, in RFC 9162 order.")


@router.get("/audit/proof/consistency", response=ConsistencyOut,
            summary="Proof that the tree of `second` leaves extends the tree of `first`")
def consistency(request: HttpRequest, first: Annotated[int, Query(ge=1, lt=MAX_INDEX)],
                second: Annotated[int, Query(ge=1, lt=MAX_INDEX)]) -> ConsistencyOut:
    _require_audit_reader(request)
    size = _size()
    if not first <= second <= size:
        raise Problem(422, "invalid", f"Ask for 1 ≤ first ≤ second ≤ {size} (the log's size).")
    proof = sequencing.consistency_proof(first, second)
    return ConsistencyOut(first=first, second=second, proof=[_b64(h) for h in proof])

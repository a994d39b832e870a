"""C2SP signed notes (Ed25519) and tlog-checkpoint bodies in the offline verifier, checked against
the published vectors of Go's golang.org/x/mod/sumdb/note (note_test.go: the PeterNeumann and
EnochRoot keys). Pure functions: no database."""

from __future__ import annotations

import base64
import secrets

import pytest

from audit.verify_audit import (
    BadSignature,
    MalformedCheckpoint,
    MalformedKey,
    MalformedNote,
    NoteError,
    UnknownKey,
    checkpoint_body,
    ed25519_public_key,
    note_key_id,
    note_vkey,
    open_checkpoint,
    open_note,
    parse_checkpoint,
    parse_vkey,
    sign_note,
)

# golang.org/x/mod/sumdb/note/note_test.go
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_SIG = ("— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6Ryy"
             "BwJnAM=\n")
ENOCH_SIG = ("— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1Rv"
             "Mc+QQ=\n")
PETER_SEED = base64.b64decode(PETER_SKEY.split("+", 4)[4])[1:]

ORIGIN = "ringfence.example/audit"
ROOT = bytes(range(32))


def test_gos_vector_signs_and_opens_byte_for_byte():
    assert len(PETER_SEED) == 32
    assert note_vkey("PeterNeumann", ed25519_public_key(PETER_SEED)) == PETER_VKEY
    assert note_key_id("PeterNeumann", ed25519_public_key(PETER_SEED)).hex() == "c74f20a3"
    assert sign_note(TEXT, "PeterNeumann", PETER_SEED) == TEXT + "\n" + PETER_SIG
    assert open_note(TEXT + "\n" + PETER_SIG, PETER_VKEY) == TEXT
    # a note signed by two keys opens with either: Enoch's signature is checked here without his private key
    both = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert open_note(both, PETER_VKEY) == TEXT == open_note(both, ENOCH_VKEY)
    assert open_note(both.encode(), parse_vkey(ENOCH_VKEY)) == TEXT


def test_gos_mangled_verifier_keys_are_refused():
    parse_vkey(PETER_VKEY)
    for i in range(len(PETER_VKEY) + 1):
        for j in range(i + 1, len(PETER_VKEY) + 1):
            if (i, j) != (0, len(PETER_VKEY)):
                with pytest.raises(MalformedKey):
                    parse_vkey(PETER_VKEY[i:j])
    for i in range(len(PETER_VKEY)):
        with pytest.raises(MalformedKey):
            parse_vkey(PETER_VKEY[:i] + chr(ord(PETER_VKEY[i]) + 1) + PETER_VKEY[i + 1:])
    for bad in ("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",  # wrong key length
                "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"):  # unknown algorithm
        with pytest.raises(MalformedKey):
            parse_vkey(bad)


def test_a_round_trip_with_a_fresh_key():
    seed = secrets.token_bytes(32)
    vkey = note_vkey(ORIGIN, ed25519_public_key(seed))
    body = checkpoint_body(ORIGIN, 1234, ROOT)
    note = sign_note(body, ORIGIN, seed)
    assert note.startswith(body + "\n— " + ORIGIN + " ") and note.endswith("\n")
    assert open_note(note, vkey) == body
    assert open_checkpoint(note, vkey) == (ORIGIN, 1234, ROOT)


def test_a_note_signed_by_another_key_names_that_key():
    note = sign_note(TEXT, "PeterNeumann", PETER_SEED)
    with pytest.raises(UnknownKey) as refused:
        open_note(note, ENOCH_VKEY)
    assert "EnochRoot+af0cfe78" in str(refused.value) and "PeterNeumann+c74f20a3" in str(refused.value)
    # the same name with another key is another key too
    impostor = note_vkey("PeterNeumann", ed25519_public_key(secrets.token_bytes(32)))
    with pytest.raises(UnknownKey):
        open_note(note, impostor)


def test_altered_text_or_signature_is_a_bad_signature():
    note = TEXT + "\n" + PETER_SIG
    with pytest.raises(BadSignature, match="invalid signature for key PeterNeumann\\+c74f20a3"):
        open_note(note.replace("problem,", "problem;"), PETER_VKEY)
    with pytest.raises(BadSignature):
        open_note(checkpoint_body(ORIGIN, 5, ROOT) + "\n" + PETER_SIG, PETER_VKEY)  # a signature moved to another text
    # Go's own case: four characters inserted into the signature
    with pytest.raises(BadSignature):
        open_note(TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:], PETER_VKEY)
    raw = base64.b64decode(PETER_SIG.split()[-1])
    for at in (4, 20, 67):  # one bit of the Ed25519 signature flipped (the key id left alone)
        forged = raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1:]
        line = "— PeterNeumann " + base64.b64encode(forged).decode() + "\n"
        with pytest.raises(BadSignature):
            open_note(TEXT + "\n" + line, PETER_VKEY)
    # a key id flipped makes it someone else's signature
    forged = bytes([raw[0] ^ 1]) + raw[1:]
    with pytest.raises(UnknownKey):
        open_note(TEXT + "\n— PeterNeumann " + base64.b64encode(forged).decode() + "\n", PETER_VKEY)


@pytest.mark.parametrize("note", [
    TEXT,
    TEXT + "\n",
    TEXT + "\n" + PETER_SIG[:-1],
    "\x01" + TEXT + "\n" + PETER_SIG,
    TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Bad Name")[:-1],
    TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
    TEXT + "\n" + PETER_SIG * 101,
    TEXT + "\n" + PETER_SIG.replace("— ", "- "),
    TEXT + "\n" + "— PeterNeumann !!!\n",
], ids=["no signatures", "blank line only", "no final newline", "control character", "bad name", "trailing text",
        "101 signatures", "hyphen instead of em dash", "not base64"])
def test_malformed_notes_are_named_malformed(note):
    with pytest.raises(MalformedNote, match="malformed"):
        open_note(note, PETER_VKEY)


def test_malformed_bytes_are_malformed():
    with pytest.raises(MalformedNote):
        open_note(b"\xff" + (TEXT + "\n" + PETER_SIG).encode(), PETER_VKEY)


def test_errors_share_one_base_that_says_what_is_wrong():
    assert {UnknownKey.kind, BadSignature.kind, MalformedNote.kind} == {"unknown key", "bad signature", "malformed"}
    assert all(issubclass(kind, NoteError) for kind in (UnknownKey, BadSignature, MalformedNote, MalformedCheckpoint))


def test_sign_refuses_what_no_verifier_could_open():
    with pytest.raises(MalformedNote):
        sign_note("no final newline", "PeterNeumann", PETER_SEED)
    with pytest.raises(MalformedNote):
        sign_note("tab\there\n", "PeterNeumann", PETER_SEED)
    for name in ("", "a b", "a+b"):
        with pytest.raises(MalformedKey):
            sign_note(TEXT, name, PETER_SEED)
        with pytest.raises(MalformedKey):
            note_vkey(name, ed25519_public_key(PETER_SEED))
    with pytest.raises(MalformedKey):
        note_vkey("PeterNeumann", b"\x00" * 31)


# --- tlog-checkpoint ------------------------------------------------------------------------------

def test_checkpoint_body_is_the_c2sp_layout():
    body = checkpoint_body(ORIGIN, 0, ROOT)
    assert body == f"{ORIGIN}\n0\n{base64.b64encode(ROOT).decode()}\n"
    assert parse_checkpoint(body) == (ORIGIN, 0, ROOT)
    with_extensions = checkpoint_body(ORIGIN, 18446744073709551615, ROOT, ["ext one", "— witness note"])
    assert with_extensions.endswith("\next one\n— witness note\n")
    assert parse_checkpoint(with_extensions) == (ORIGIN, 2**64 - 1, ROOT)


@pytest.mark.parametrize("text", [
    f"{ORIGIN}\n5\n{base64.b64encode(ROOT).decode()}",  # no final newline
    f"{ORIGIN}\n5\n",  # no root line
    f"\n5\n{base64.b64encode(ROOT).decode()}\n",  # empty origin
    f"{ORIGIN}\n05\n{base64.b64encode(ROOT).decode()}\n",  # leading zero
    f"{ORIGIN}\n-5\n{base64.b64encode(ROOT).decode()}\n",
    f"{ORIGIN}\n+5\n{base64.b64encode(ROOT).decode()}\n",
    f"{ORIGIN}\n５\n{base64.b64encode(ROOT).decode()}\n",  # not ASCII digits
    f"{ORIGIN}\n18446744073709551616\n{base64.b64encode(ROOT).decode()}\n",  # past 64 bits
    f"{ORIGIN}\n5\n{base64.b64encode(ROOT[:31]).decode()}\n",  # 31-byte root
    f"{ORIGIN}\n5\n{base64.b64encode(ROOT).decode().rstrip('=')}\n",  # padding dropped
    f"{ORIGIN}\n5\n{base64.b64encode(ROOT).decode()[:-2]}9=\n",  # the same bytes, non-canonical trailing bits
    f"{ORIGIN}\n5\n{base64.b64encode(ROOT).decode()}\n\nextension\n",  # empty extension line
])
def test_malformed_checkpoints_are_refused(text):
    with pytest.raises(MalformedCheckpoint):
        parse_checkpoint(text)


def test_a_checkpoint_cannot_be_built_malformed():
    for origin, size, root, extensions in ((ORIGIN, -1, ROOT, ()), ("", 1, ROOT, ()), ("a\nb", 1, ROOT, ()),
                                           (ORIGIN, 1, ROOT[:31], ()), (ORIGIN, 1, ROOT, ("",))):
        with pytest.raises(MalformedCheckpoint):
            checkpoint_body(origin, size, root, extensions)


def test_a_signed_note_that_is_not_a_checkpoint_is_refused_once_opened():
    with pytest.raises(MalformedCheckpoint):
        open_checkpoint(sign_note(TEXT, "PeterNeumann", PETER_SEED), PETER_VKEY)

"""Signed notes and checkpoints against published vectors: Go's note package (a signature
reproduced byte for byte), the C2SP signed-note example, and a checkpoint of Sigstore's Rekor
log (ECDSA P-256, key ID per transparency-dev/formats); then the checkpoint format and every way a
note can be wrong."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from mitransfer.protocol import checkpoint, note, suites
from mitransfer.protocol.checkpoint import Checkpoint
from mitransfer.protocol.note import NoteError, NoteSigner
from mitransfer.protocol.suites import VerifyingKey

# golang.org/x/mod/sumdb/note, example_test.go: a signer key, a text and its signed note.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = (GO_TEXT + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdng"
           "otpRZb6KE6RyyBwJnAM=\n").encode()
# c2sp.org/signed-note, "Verifier keys": the example vkey and the note it verifies.
C2SP_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
C2SP_NOTE = ("This is an example message.\n\n— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Z"
             "tg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n").encode()
# github.com/transparency-dev/formats note_verifier_test.go: Rekor's ECDSA key and a checkpoint.
REKOR_VKEY_MATERIAL = ("AjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABNhtmPtrWm3U1eQXBogSMdGvXwBcK5AW5i0hrZLOC96l+smGNM7n"
                       "wZ4QvFK/4sueRoVj//QP22Ni4Qt9DPfkWLc=")
REKOR_NOTE = ("Rekor\n798034\nf+7CoKgXKE/tNys9TTXcr/ad6U/K3xvznmzew9y6SP0=\n\n— rekor.sigstore.dev wNI9ajBEAiARInWIWyC"
              "dyG27CO6LPnPekyw20qO0YJfoaPaowGp/XgIgc+qEHS3+GKVClgqq20uDLet7MCoTURUCRdxwWBHHufk=\n").encode()


def ed25519_key(raw: bytes, key_id: str = "k") -> VerifyingKey:
    return VerifyingKey(key_id, suites.ED25519, ed25519.Ed25519PublicKey.from_public_bytes(raw))


def vkey_key(vkey: str) -> tuple[str, VerifyingKey]:
    name, _, encoded = vkey.split("+", 2)
    raw = base64.b64decode(encoded)
    assert raw[0] == note.ED25519_TYPE
    return name, ed25519_key(raw[1:])


def lookup(*pairs: tuple[str, VerifyingKey]) -> note.KeyLookup:
    return note.known_keys(pairs)


def go_signer() -> NoteSigner:
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])[1:]
    private = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    signing = suites.signing_key("go-example", private)
    return NoteSigner("PeterNeumann", signing.verifying_key(), signing.sign)


def test_go_note_signature_reproduced_byte_for_byte() -> None:
    signer = go_signer()
    assert signer.key_id == 0xC74F20A3
    assert note.verifier_key("PeterNeumann", signer.key) == GO_VKEY
    assert note.sign(GO_TEXT, [signer]) == GO_NOTE
    opened = note.open_note(GO_NOTE, lookup(vkey_key(GO_VKEY)))
    assert opened.text == GO_TEXT and [s.key_id for s in opened.signatures] == [0xC74F20A3]


def test_c2sp_example_verifies() -> None:
    name, key = vkey_key(C2SP_VKEY)
    assert note.verifier_key(name, key) == C2SP_VKEY  # the key ID is computed as the spec says
    assert note.open_note(C2SP_NOTE, lookup((name, key))).text == "This is an example message.\n"


def test_rekor_ecdsa_checkpoint_verifies() -> None:
    der = base64.b64decode(REKOR_VKEY_MATERIAL)[1:]
    pem = serialization.load_der_public_key(der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    key = suites.load_verifying_key("rekor", "ecdsa-p256-sha256", pem)
    assert note.key_id("rekor.sigstore.dev", key) == 0xC0D23D6A
    assert note.public_key_bytes(key) == base64.b64decode(REKOR_VKEY_MATERIAL)
    opened = note.open_note(REKOR_NOTE, lookup(("rekor.sigstore.dev", key)))
    assert checkpoint.parse_text(opened.text) == Checkpoint(
        "Rekor", 798034, base64.b64decode("f+7CoKgXKE/tNys9TTXcr/ad6U/K3xvznmzew9y6SP0="))
    with pytest.raises(NoteError) as err:  # the same key under another name is another key
        note.open_note(REKOR_NOTE, lookup(("bananas.sigstore.dev", key)))
    assert err.value.reason == "NOTE_UNVERIFIED"


@pytest.mark.parametrize("suite", list(suites.SUITES.values()), ids=list(suites.SUITES))
def test_every_suite_signs_checkpoints(suite: suites.Suite) -> None:
    signing = suites.signing_key("gateway-1", suite.generate())
    signer = NoteSigner("example.org/log", signing.verifying_key(), signing.sign)
    head = Checkpoint("example.org/log", 12, bytes(range(32)))
    signed = checkpoint.sign(head, [signer])
    known = lookup(("example.org/log", signing.verifying_key()))
    assert checkpoint.open_checkpoint(signed, "example.org/log", known) == head
    with pytest.raises(NoteError) as err:
        checkpoint.open_checkpoint(signed, "example.org/other", known)
    assert err.value.reason == "NOTE_UNVERIFIED"
    tampered = signed.replace(b"\n12\n", b"\n13\n")
    with pytest.raises(NoteError) as err:
        checkpoint.open_checkpoint(tampered, "example.org/log", known)
    assert err.value.reason == "NOTE_SIGNATURE_INVALID"


def test_key_ids_differ_by_algorithm_and_name() -> None:
    keys = [suites.signing_key("k", s.generate()).verifying_key() for s in suites.SUITES.values()]
    ids = {note.key_id("log", k) for k in keys} | {note.key_id("other", keys[0])}
    assert len(ids) == len(keys) + 1


def test_unknown_signatures_are_ignored_and_a_known_bad_one_fails() -> None:
    signer = go_signer()
    stranger = suites.signing_key("x", ed25519.Ed25519PrivateKey.generate())
    other = NoteSigner("Stranger", stranger.verifying_key(), stranger.sign)
    both = note.sign(GO_TEXT, [other, signer])
    opened = note.open_note(both, lookup(("PeterNeumann", signer.key)))
    assert [s.name for s in opened.signatures] == ["PeterNeumann"]
    with pytest.raises(NoteError) as err:
        note.open_note(both, lookup(("Stranger", signer.key)))
    assert err.value.reason == "NOTE_UNVERIFIED"  # right name, wrong key: another key ID, ignored
    forged = note.Note(GO_TEXT, (note.Signature("PeterNeumann", signer.key_id, bytes(64)),)).encode()
    with pytest.raises(NoteError) as err:
        note.open_note(forged, lookup(("PeterNeumann", signer.key)))
    assert err.value.reason == "NOTE_SIGNATURE_INVALID"


MALFORMED = {
    "no blank line": GO_TEXT.encode() + "— PeterNeumann AAAAAAA=\n".encode(),
    "no signature": GO_TEXT.encode() + b"\n",
    "no final newline": GO_NOTE[:-1],
    "not an em dash": GO_NOTE.replace("—".encode(), b"-"),
    "not base64": GO_NOTE.replace(b"x08go", b"x08g!"),
    "too short": GO_TEXT.encode() + "\n— PeterNeumann AAAA\n".encode(),
    "a control character": GO_NOTE.replace(b"If you", b"If\tyou"),
    "not UTF-8": b"\xff" + GO_NOTE,
    "a plus in the name": GO_NOTE.replace(b"PeterNeumann", b"Peter+Neumann"),
}


@pytest.mark.parametrize("message", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_notes(message: bytes) -> None:
    with pytest.raises(NoteError) as err:
        note.open_note(message, lookup(vkey_key(GO_VKEY)))
    assert err.value.reason == "NOTE_MALFORMED"


BAD_CHECKPOINTS = {
    "two lines": "log\n12\n",
    "leading zero": "log\n012\n" + "A" * 43 + "=\n",
    "negative": "log\n-1\n" + "A" * 43 + "=\n",
    "short root": "log\n12\nAAAA\n",
    "empty origin": "\n12\n" + "A" * 43 + "=\n",
    "no final newline": "log\n12\n" + "A" * 43 + "=",
}


@pytest.mark.parametrize("text", list(BAD_CHECKPOINTS.values()), ids=list(BAD_CHECKPOINTS))
def test_malformed_checkpoint_text(text: str) -> None:
    with pytest.raises(NoteError) as err:
        checkpoint.parse_text(text)
    assert err.value.reason == "CHECKPOINT_MALFORMED"


def test_checkpoint_extension_lines_are_read_past() -> None:
    head = Checkpoint("log", 0, bytes(32))
    assert checkpoint.parse_text(head.text() + "extension\n") == head


@settings(max_examples=50, deadline=None)
@given(origin=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FFF).filter(
           lambda c: c != "+" and not c.isspace()), min_size=1, max_size=30),
       size=st.integers(0, (1 << 63) - 1), root=st.binary(min_size=32, max_size=32))
def test_checkpoint_text_round_trips(origin: str, size: int, root: bytes) -> None:
    head = Checkpoint(origin, size, root)
    assert checkpoint.parse_text(head.text()) == head


# golang.org/x/mod/sumdb/client_test.go: the test server's key and a tree head it signed (the
# checkpoint format's ancestor: origin line, size, base64 root).
SUMDB_SKEY = "PRIVATE+KEY+localhost.localdev/sumdb+00000c67+AXu6+oaVaOYuQOFrf1V59JK1owcFlJcHwwXHDfDGxSPk"
SUMDB_VKEY = "localhost.localdev/sumdb+00000c67+AcTrnkbUA+TU4heY3hkjiSES/DSQniBqIeQ/YppAUtK6"
SUMDB_SIGNATURE = ("— localhost.localdev/sumdb AAAMZ6oRNswlEZ6ZZhxrCvgl1MBy+nusq4JU+TG6Fe2NihWLqOzb+y2c2kzRLoCr4tvw9o"
                   "36ucQEnhc20e4nA4Qc/wc=\n")


def test_a_tree_head_signature_reproduced_byte_for_byte() -> None:
    seed = base64.b64decode(SUMDB_SKEY.split("+", 4)[4])[1:]
    signing = suites.signing_key("sumdb", ed25519.Ed25519PrivateKey.from_private_bytes(seed))
    signer = NoteSigner("localhost.localdev/sumdb", signing.verifying_key(), signing.sign)
    assert note.verifier_key(signer.name, signer.key) == SUMDB_VKEY  # key ID 00000c67, as Go computes it
    head = Checkpoint("go.sum database tree", 6, base64.b64decode("wc4SkQt52o5W2nQ8To2ARs+mWuUJjss+sdleoiqxMmM="))
    signed = checkpoint.sign(head, [signer])
    assert signed == (head.text() + "\n" + SUMDB_SIGNATURE).encode()
    assert checkpoint.parse_text(note.open_note(signed, lookup(vkey_key(SUMDB_VKEY))).text) == head

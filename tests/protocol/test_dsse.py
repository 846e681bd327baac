"""PAE: the published vectors, lengths in UTF-8 bytes, and no two (type, payload) pairs alike."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mitransfer.protocol.dsse import fingerprint, pae

types = st.text(max_size=40)
payloads = st.binary(max_size=200)


@pytest.mark.parametrize(("payload_type", "payload", "expected"), [
    # DSSE's own test vector (protocol.md of secure-systems-lab/dsse)
    ("http://example.com/HelloWorld", b"hello world", b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"),
    ("", b"", b"DSSEv1 0  0 "),
    ("mitransfer.v1.OutboundNotice", b"\x00 \n", b"DSSEv1 28 mitransfer.v1.OutboundNotice 3 \x00 \n"),
    ("类型", b"x", "DSSEv1 6 类型 1 x".encode()),  # lengths count UTF-8 bytes, not characters
])
def test_pae_vectors(payload_type: str, payload: bytes, expected: bytes) -> None:
    assert pae(payload_type, payload) == expected


def _unpae(data: bytes) -> tuple[str, bytes]:
    """Decode PAE again: what a verifier could recover from the signed bytes alone."""
    prefix, rest = data.split(b" ", 1)
    assert prefix == b"DSSEv1"
    type_len, rest = rest.split(b" ", 1)
    t, rest = rest[: int(type_len)], rest[int(type_len):]
    assert rest[:1] == b" "
    body_len, body = rest[1:].split(b" ", 1)
    assert len(body) == int(body_len)
    return t.decode(), body


@given(types, payloads)
def test_pae_is_decodable(payload_type: str, payload: bytes) -> None:
    assert _unpae(pae(payload_type, payload)) == (payload_type, payload)


@given(types, payloads, types, payloads)
def test_pae_is_injective(type_a: str, payload_a: bytes, type_b: str, payload_b: bytes) -> None:
    if (type_a, payload_a) != (type_b, payload_b):
        assert pae(type_a, payload_a) != pae(type_b, payload_b)


@given(st.text(st.characters(codec="ascii"), max_size=60), st.integers(0, 60), st.integers(0, 60))
def test_pae_keeps_apart_pairs_that_concatenate_alike(whole: str, i: int, j: int) -> None:
    """The same bytes cut at two places (type | payload): a bare concatenation could not tell them apart."""
    i, j = min(i, len(whole)), min(j, len(whole))
    if i != j:
        assert pae(whole[:i], whole[i:].encode()) != pae(whole[:j], whole[j:].encode())


@given(types, payloads)
def test_fingerprint_is_sha256_of_pae(payload_type: str, payload: bytes) -> None:
    assert fingerprint(payload_type, payload) == hashlib.sha256(pae(payload_type, payload)).digest()

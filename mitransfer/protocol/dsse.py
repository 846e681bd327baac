"""DSSE pre-authentication encoding: the bytes every signature of the protocol covers.

A signature covers PAE(payload_type, payload), where payload is the message exactly as its
sender serialized it, once. PAE binds the payload type (so a signature over one kind never
verifies as another) and needs no canonical re-serialization (protobuf has none): verifiers check
the bytes as received and only then parse them. See https://github.com/secure-systems-lab/dsse.
"""

from __future__ import annotations

import hashlib


def pae(payload_type: str, payload: bytes) -> bytes:
    """b"DSSEv1 <len(type)> <type> <len(payload)> <payload>", lengths in decimal bytes.

    The type is encoded as UTF-8 and its length counts bytes, not characters. Every length is
    written out, so two different (type, payload) pairs never give the same bytes.
    Raises UnicodeEncodeError for a type holding lone surrogates (no protobuf name does).
    """
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


def fingerprint(payload_type: str, payload: bytes) -> bytes:
    """SHA-256 over PAE: what makes two submissions "the same message" for idempotency."""
    return hashlib.sha256(pae(payload_type, payload)).digest()

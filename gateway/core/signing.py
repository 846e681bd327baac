"""DSSE-style signatures: PAE, signing keys, verification with algorithm agility.

A signature covers PAE(payload_type, payload), so it binds the message kind and needs no
canonical re-serialization. Which algorithm verifies a key is fixed by the agency registry,
never by the message, so a sender cannot downgrade it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

_PAE_PREFIX = b"DSSEv1"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body."""
    type_bytes = payload_type.encode()
    return b" ".join(
        (_PAE_PREFIX, str(len(type_bytes)).encode(), type_bytes, str(len(payload)).encode(), payload)
    )


def fingerprint(payload_type: str, payload: bytes) -> bytes:
    """SHA-256 over PAE: what makes two submissions "the same message" for idempotency."""
    return hashlib.sha256(pae(payload_type, payload)).digest()


class Algorithm(StrEnum):
    """Signature algorithms a registry entry may name."""

    ED25519 = "ed25519"
    ECDSA_P256_SHA256 = "ecdsa-p256-sha256"


class SignatureKeyError(ValueError):
    """A key in configuration does not fit its declared algorithm."""


@dataclass(frozen=True)
class VerifyingKey:
    """A public key with the algorithm the registry assigns to it."""

    key_id: str
    algorithm: Algorithm
    key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey

    @classmethod
    def from_pem(cls, key_id: str, algorithm: str, pem: bytes) -> VerifyingKey:
        """Load an SPKI PEM. Raises SignatureKeyError if it does not match the algorithm."""
        alg = Algorithm(algorithm)
        key = serialization.load_pem_public_key(pem)
        if alg is Algorithm.ED25519 and isinstance(key, ed25519.Ed25519PublicKey):
            return cls(key_id, alg, key)
        if (
            alg is Algorithm.ECDSA_P256_SHA256
            and isinstance(key, ec.EllipticCurvePublicKey)
            and isinstance(key.curve, ec.SECP256R1)
        ):
            return cls(key_id, alg, key)
        raise SignatureKeyError(f"key {key_id} is not an {alg.value} public key")

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True if `signature` is this key's signature over `data`."""
        try:
            if isinstance(self.key, ed25519.Ed25519PublicKey):
                self.key.verify(signature, data)
            else:
                self.key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    def public_pem(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class Signer(Protocol):
    """Something that signs with a registered key: a local key now, an HSM later."""

    @property
    def key_id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class LocalSigner:
    """A signing key held in process memory, loaded from a PKCS8 PEM file."""

    key_id: str
    algorithm: Algorithm
    private_key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def from_pem(cls, key_id: str, pem: bytes) -> LocalSigner:
        key = serialization.load_pem_private_key(pem, password=None)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return cls(key_id, Algorithm.ED25519, key)
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            return cls(key_id, Algorithm.ECDSA_P256_SHA256, key)
        raise SignatureKeyError(f"signing key {key_id}: unsupported key type")

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            return self.private_key.sign(data)
        return self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))

    def verifying_key(self) -> VerifyingKey:
        return VerifyingKey(self.key_id, self.algorithm, self.private_key.public_key())

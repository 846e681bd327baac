"""The gateway's signing keys and the verification keys it reads from the registry.

A signature covers PAE(payload_type, payload) (`mitransfer.protocol.dsse`), so it binds the
message kind and needs no canonical re-serialization. Which algorithm verifies a key is fixed by
the agency registry, never by the message, so a sender cannot downgrade it; the algorithms
themselves are the suites of `mitransfer.protocol.suites`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mitransfer.protocol import suites
from mitransfer.protocol.dsse import fingerprint, pae
from mitransfer.protocol.errors import UnusableKey
from mitransfer.protocol.suites import VerifyingKey

__all__ = ["LocalSigner", "SignatureKeyError", "Signer", "VerifyingKey", "fingerprint", "pae"]


class SignatureKeyError(ValueError):
    """A key in configuration does not fit its declared algorithm, or no suite supports it."""


class Signer(Protocol):
    """Something that signs with a registered key: a local key now, an HSM later."""

    @property
    def key_id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class LocalSigner:
    """A signing key held in process memory, loaded from a PKCS8 PEM file."""

    key: suites.SigningKey

    @classmethod
    def from_pem(cls, key_id: str, pem: bytes) -> LocalSigner:
        """Load an unencrypted PKCS8 PEM of any suite (Ed25519, ECDSA P-256, SM2 with the sm extra).

        Raises:
            SignatureKeyError: the PEM is unreadable or its key type belongs to no suite.
        """
        try:
            return cls(suites.load_signing_key(key_id, pem))
        except UnusableKey as exc:
            raise SignatureKeyError(str(exc)) from exc

    @property
    def key_id(self) -> str:
        return self.key.key_id

    @property
    def algorithm(self) -> str:
        """The suite's name, as a registry entry names it."""
        return self.key.algorithm

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)

    def verifying_key(self) -> VerifyingKey:
        return self.key.verifying_key()

"""DSSE signatures: PAE, the platform's signer, and the registry's verification keys.

A signature covers PAE(payload_type, payload), where payload is the message serialized ONCE by
its sender. Verifiers check the signature over the bytes as received and only then parse them;
nothing is ever re-serialized to be verified (protobuf serialization is not canonical).

Which algorithm verifies a key comes from the registry entry, never from the message, so a
sender cannot choose a weaker one. A key counts only within its registry window (not_before,
not_after, revoked_at), judged at the time the gateway accepted the message (the receipt's
`accepted_at`): what was accepted before a key was retired still verifies after it. PAE, the
signature suites and the registry's format are `mitransfer.protocol`'s, the very ones the
gateway uses.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from clients.errors import RegistryError, VerificationError
from clients.messages import RECEIPT_PAYLOAD_TYPE, BusinessMessage, MessageKind, is_gateway_kind, payload_type
from mitransfer.protocol import registry as registry_format
from mitransfer.protocol import suites
from mitransfer.protocol.dsse import pae
from mitransfer.protocol.errors import RegistryFormatError, UnusableKey
from mitransfer.protocol.validity import KeyNotValid
from mitransfer.v1 import envelope_pb2

__all__ = ["GATEWAY", "KeyRing", "Signer", "VerifyingKey", "load_verifying_key", "pae"]

GATEWAY = "gateway"  # owner of the receipt-signing keys in a KeyRing


@dataclass(frozen=True)
class VerifyingKey:
    """A registered public key, with the suite the registry assigns to it, and who owns it."""

    key: suites.VerifyingKey
    owner: str  # a platform id, or GATEWAY

    @property
    def key_id(self) -> str:
        return self.key.key_id

    @property
    def algorithm(self) -> str:
        """The registry's name of its algorithm ("ed25519", "ecdsa-p256-sha256")."""
        return self.key.algorithm

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True if `signature` is this key's signature over `data` under its algorithm."""
        return self.key.verify(signature, data)

    def check_window(self, when: dt.datetime | None) -> None:
        """Raise VerificationError (KEY_EXPIRED, KEY_REVOKED, KEY_NOT_YET_VALID) naming the key
        unless it was valid at `when`; None checks nothing (no time known)."""
        if when is None:
            return
        try:
            self.key.window.check(self.key_id, when)
        except KeyNotValid as exc:
            raise VerificationError(str(exc), reason=exc.reason) from exc


def load_verifying_key(key_id: str, algorithm: str, pem: str, owner: str) -> VerifyingKey:
    """Load an SPKI PEM public key that must match `algorithm`. Raises RegistryError."""
    try:
        return VerifyingKey(suites.load_verifying_key(key_id, algorithm, pem.encode("utf-8")), owner)
    except UnusableKey as exc:
        raise RegistryError(str(exc)) from exc


@dataclass(frozen=True)
class Signer:
    """The platform's signing key (a local PKCS8 key; an HSM would replace `sign_bytes` only).

    `private_key` is the signing library's key object (pyca/cryptography's Ed25519 or ECDSA P-256
    key, or tongsuopy's SM2 key). Raises ValueError if no signature suite holds a key of its type.
    """

    key_id: str
    private_key: Any
    _key: suites.SigningKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_key", suites.signing_key(self.key_id, self.private_key))

    @classmethod
    def from_pem(cls, key_id: str, pem: bytes) -> Signer:
        """From an unencrypted PKCS8 PEM (Ed25519, ECDSA P-256 or SM2). Raises ValueError."""
        return cls(key_id, suites.load_signing_key(key_id, pem).key)

    @property
    def algorithm(self) -> str:
        """The registry's name of its algorithm."""
        return self._key.algorithm

    def sign_bytes(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def sign(self, kind: MessageKind, message: BusinessMessage) -> envelope_pb2.SignedMessage:
        """Serialize `message` once and sign those very bytes.

        Keep the returned SignedMessage: a retry must resend it unchanged, never a re-signed copy.
        Raises ValueError if `kind` is not the kind of `message`.
        """
        ptype = payload_type(kind)
        if message.DESCRIPTOR.full_name != ptype:
            raise ValueError(f"kind {ptype} does not match a {message.DESCRIPTOR.full_name}")
        payload = message.SerializeToString()
        return envelope_pb2.SignedMessage(
            kind=kind, payload=payload, key_id=self.key_id, signature=self.sign_bytes(pae(ptype, payload))
        )


@dataclass(frozen=True)
class KeyRing:
    """What the registry says about keys and agencies, for verifying what others signed."""

    platform_keys: Mapping[str, VerifyingKey]  # key id → key (owner: platform id)
    gateway_keys: Mapping[str, VerifyingKey]   # key id → key (owner: GATEWAY)
    agencies: Mapping[str, str]                # agency code → platform id
    log_origin: str = registry_format.RegistryDocument.log_origin  # the gateway's transparency log's name

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        """Read registry.json. Raises RegistryError naming the file and the field."""
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise RegistryError(f"cannot read registry {path}: {exc}") from exc
        try:
            return cls.of(registry_format.from_json(text))
        except RegistryFormatError as exc:
            raise RegistryError(f"registry {path}: {exc}") from exc

    @classmethod
    def from_registry(cls, data: Mapping[str, Any]) -> KeyRing:
        """Build from the parsed registry JSON. Raises RegistryError if it is inconsistent."""
        try:
            return cls.of(registry_format.from_dict(data))
        except RegistryFormatError as exc:
            raise RegistryError(str(exc)) from exc

    @classmethod
    def of(cls, document: registry_format.RegistryDocument) -> KeyRing:
        """The keys and agencies of a checked registry document."""
        gateway_keys = {key_id: VerifyingKey(key, GATEWAY) for key_id, key in document.gateway_keys.items()}
        platform_keys = {key_id: VerifyingKey(key, platform.id)
                         for platform in document.platforms.values() for key_id, key in platform.keys.items()}
        agencies = {code: agency.platform for code, agency in document.agencies.items()}
        return cls(platform_keys, gateway_keys, agencies, document.log_origin)

    def platform_of_agency(self, code: str) -> str | None:
        return self.agencies.get(code)

    def agencies_of(self, platform: str) -> tuple[str, ...]:
        """The agency codes a platform speaks for, sorted."""
        return tuple(sorted(code for code, owner in self.agencies.items() if owner == platform))

    def platform_of_key(self, key_id: str) -> str:
        """The platform owning a signing key. Raises VerificationError (UNKNOWN_KEY)."""
        return self._platform_key(key_id).owner

    def verify_message(self, signed: envelope_pb2.SignedMessage,
                       accepted_at: dt.datetime | None = None) -> tuple[MessageKind, bytes]:
        """Check a platform's signature over the payload bytes as received, with a key valid at
        `accepted_at` (the receipt's time; None: the window is not judged).

        Returns (kind, payload) for the caller to parse. Which platform signed it is
        `platform_of_key(signed.key_id)`; whether that platform may speak for the header's sender
        is for the caller to check after parsing (see `clients.deliveries`).

        Raises:
            VerificationError: UNKNOWN_KIND, UNKNOWN_KEY, KEY_EXPIRED / KEY_REVOKED /
                KEY_NOT_YET_VALID, or BAD_SIGNATURE.
        """
        if is_gateway_kind(signed.kind):  # a platform key never signs what the gateway writes
            raise VerificationError(f"kind {int(signed.kind)} is signed by the gateway, not a platform",
                                    reason="UNKNOWN_KIND")
        ptype = payload_type(signed.kind)
        key = self._platform_key(signed.key_id)
        key.check_window(accepted_at)
        if not key.verify(signed.signature, pae(ptype, signed.payload)):
            raise VerificationError(f"signature by {signed.key_id} over {ptype} does not verify",
                                    reason="BAD_SIGNATURE")
        return signed.kind, signed.payload

    def verify_gateway_message(self, signed: envelope_pb2.SignedMessage,
                               accepted_at: dt.datetime | None = None) -> tuple[MessageKind, bytes]:
        """Check a gateway notice (review decision, closure, expiry): signed by a registry GATEWAY key
        valid at `accepted_at` (None: the window is not judged).

        Raises:
            VerificationError: UNKNOWN_KIND (not a gateway kind), UNKNOWN_KEY, KEY_EXPIRED /
                KEY_REVOKED / KEY_NOT_YET_VALID, or BAD_SIGNATURE.
        """
        if not is_gateway_kind(signed.kind):
            raise VerificationError(f"kind {int(signed.kind)} is not written by the gateway", reason="UNKNOWN_KIND")
        ptype = payload_type(signed.kind)
        key = self.gateway_keys.get(signed.key_id)
        if key is None:
            raise VerificationError(f"{signed.key_id!r} is not a gateway key of the registry", reason="UNKNOWN_KEY")
        key.check_window(accepted_at)
        if not key.verify(signed.signature, pae(ptype, signed.payload)):
            raise VerificationError(f"gateway signature over {ptype} does not verify", reason="BAD_SIGNATURE")
        return signed.kind, signed.payload

    def verify_receipt(self, receipt: envelope_pb2.Receipt) -> envelope_pb2.ReceiptBody:
        """Check the gateway's signature over the receipt body, parse it, and check that the key
        was valid at the receipt's own `accepted_at` (a receipt dated after its key's end is
        refused, whoever made it).

        Raises:
            VerificationError: UNKNOWN_KEY, BAD_SIGNATURE, PAYLOAD_UNDECODABLE, or KEY_EXPIRED /
                KEY_REVOKED / KEY_NOT_YET_VALID naming the key.
        """
        key = self.gateway_keys.get(receipt.key_id)
        if key is None:
            raise VerificationError(f"{receipt.key_id!r} is not a gateway key of the registry",
                                    reason="UNKNOWN_KEY")
        if not key.verify(receipt.signature, pae(RECEIPT_PAYLOAD_TYPE, receipt.body)):
            raise VerificationError(f"receipt signature by {receipt.key_id} does not verify",
                                    reason="BAD_SIGNATURE")
        body = envelope_pb2.ReceiptBody()
        try:
            body.ParseFromString(receipt.body)
        except DecodeError as exc:
            raise VerificationError("receipt body does not parse", reason="PAYLOAD_UNDECODABLE") from exc
        key.check_window(body.accepted_at.ToDatetime(dt.UTC))
        return body

    def _platform_key(self, key_id: str) -> VerifyingKey:
        key = self.platform_keys.get(key_id)
        if key is None:
            raise VerificationError(f"{key_id!r} is not a platform key of the registry", reason="UNKNOWN_KEY")
        return key

"""DSSE signatures: PAE, the platform's signer, and the registry's verification keys.

A signature covers PAE(payload_type, payload), where payload is the message serialized ONCE by
its sender. Verifiers check the signature over the bytes as received and only then parse them;
nothing is ever re-serialized to be verified (protobuf serialization is not canonical).

Which algorithm verifies a key comes from the registry entry, never from the message, so a
sender cannot choose a weaker one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from google.protobuf.message import DecodeError

from clients.errors import RegistryError, VerificationError
from clients.messages import RECEIPT_PAYLOAD_TYPE, BusinessMessage, MessageKind, is_gateway_kind, payload_type
from mitransfer.v1 import envelope_pb2

PublicKey: TypeAlias = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey: TypeAlias = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey

GATEWAY = "gateway"  # owner of the receipt-signing keys in a KeyRing


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: b"DSSEv1 <len(type)> <type> <len(payload)> <payload>".

    Lengths are decimal byte counts; the type is encoded as UTF-8.
    """
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


class Algorithm(StrEnum):
    """Signature algorithms a registry entry may name."""

    ED25519 = "ed25519"
    ECDSA_P256_SHA256 = "ecdsa-p256-sha256"  # ECDSA on P-256 with SHA-256, DER-encoded signature


@dataclass(frozen=True)
class VerifyingKey:
    """A registered public key, the algorithm the registry assigns to it, and who owns it."""

    key_id: str
    algorithm: Algorithm
    public_key: PublicKey
    owner: str  # a platform id, or GATEWAY

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True if `signature` is this key's signature over `data` under its algorithm."""
        try:
            if self.algorithm is Algorithm.ED25519 and isinstance(self.public_key, ed25519.Ed25519PublicKey):
                self.public_key.verify(signature, data)
                return True
            if self.algorithm is Algorithm.ECDSA_P256_SHA256 and isinstance(
                self.public_key, ec.EllipticCurvePublicKey
            ):
                self.public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
                return True
        except (InvalidSignature, ValueError):
            return False
        return False


def load_verifying_key(key_id: str, algorithm: str, pem: str, owner: str) -> VerifyingKey:
    """Load an SPKI PEM public key that must match `algorithm`. Raises RegistryError."""
    try:
        alg = Algorithm(algorithm)
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise RegistryError(f"key {key_id}: {exc}") from exc
    if alg is Algorithm.ED25519 and isinstance(key, ed25519.Ed25519PublicKey):
        return VerifyingKey(key_id, alg, key, owner)
    if (
        alg is Algorithm.ECDSA_P256_SHA256
        and isinstance(key, ec.EllipticCurvePublicKey)
        and isinstance(key.curve, ec.SECP256R1)
    ):
        return VerifyingKey(key_id, alg, key, owner)
    raise RegistryError(f"key {key_id} is not an {alg.value} public key")


@dataclass(frozen=True)
class Signer:
    """The platform's signing key (a local PKCS8 key; an HSM would replace `sign_bytes` only)."""

    key_id: str
    private_key: PrivateKey

    @classmethod
    def from_pem(cls, key_id: str, pem: bytes) -> Signer:
        """From an unencrypted PKCS8 PEM (Ed25519 or ECDSA P-256). Raises ValueError."""
        key = serialization.load_pem_private_key(pem, password=None)
        if isinstance(key, ed25519.Ed25519PrivateKey) or (
            isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
        ):
            return cls(key_id, key)
        raise ValueError(f"signing key {key_id}: only Ed25519 and ECDSA P-256 keys are supported")

    def sign_bytes(self, data: bytes) -> bytes:
        if isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            return self.private_key.sign(data)
        return self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))

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

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        """Read registry.json. Raises RegistryError."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RegistryError(f"cannot read registry {path}: {exc}") from exc
        return cls.from_registry(data)

    @classmethod
    def from_registry(cls, data: Mapping[str, Any]) -> KeyRing:
        """Build from the parsed registry JSON. Raises RegistryError if it is inconsistent."""
        try:
            gateway_keys = {
                str(k["key_id"]): load_verifying_key(str(k["key_id"]), str(k["algorithm"]),
                                                     str(k["public_key"]), GATEWAY)
                for k in data["gateway"]["keys"]
            }
            platform_keys: dict[str, VerifyingKey] = {}
            for p in data["platforms"]:
                for k in p["keys"]:
                    key_id = str(k["key_id"])
                    if key_id in platform_keys or key_id in gateway_keys:
                        raise RegistryError(f"key id {key_id} is listed twice")
                    platform_keys[key_id] = load_verifying_key(key_id, str(k["algorithm"]),
                                                               str(k["public_key"]), str(p["id"]))
            provinces = {str(p["id"]): {str(x) for x in p["provinces"]} for p in data["platforms"]}
            agencies: dict[str, str] = {}
            for a in data["agencies"]:
                code, platform = str(a["code"]), str(a["platform"])
                if platform not in provinces:
                    raise RegistryError(f"agency {code}: unknown platform {platform}")
                if code[:2] not in provinces[platform]:
                    raise RegistryError(f"agency {code} is outside the provinces of platform {platform}")
                if code in agencies:
                    raise RegistryError(f"agency {code} is listed twice")
                agencies[code] = platform
        except (KeyError, TypeError) as exc:
            raise RegistryError(f"registry is missing or mistypes {exc}") from exc
        return cls(platform_keys, gateway_keys, agencies)

    def platform_of_agency(self, code: str) -> str | None:
        return self.agencies.get(code)

    def agencies_of(self, platform: str) -> tuple[str, ...]:
        """The agency codes a platform speaks for, sorted."""
        return tuple(sorted(code for code, owner in self.agencies.items() if owner == platform))

    def platform_of_key(self, key_id: str) -> str:
        """The platform owning a signing key. Raises VerificationError (UNKNOWN_KEY)."""
        return self._platform_key(key_id).owner

    def verify_message(self, signed: envelope_pb2.SignedMessage) -> tuple[MessageKind, bytes]:
        """Check a platform's signature over the payload bytes as received.

        Returns (kind, payload) for the caller to parse. Which platform signed it is
        `platform_of_key(signed.key_id)`; whether that platform may speak for the header's sender
        is for the caller to check after parsing (see `clients.deliveries`).

        Raises:
            VerificationError: UNKNOWN_KIND, UNKNOWN_KEY or BAD_SIGNATURE.
        """
        if is_gateway_kind(signed.kind):  # a platform key never signs what the gateway writes
            raise VerificationError(f"kind {int(signed.kind)} is signed by the gateway, not a platform",
                                    reason="UNKNOWN_KIND")
        ptype = payload_type(signed.kind)
        key = self._platform_key(signed.key_id)
        if not key.verify(signed.signature, pae(ptype, signed.payload)):
            raise VerificationError(f"signature by {signed.key_id} over {ptype} does not verify",
                                    reason="BAD_SIGNATURE")
        return signed.kind, signed.payload

    def verify_gateway_message(self, signed: envelope_pb2.SignedMessage) -> tuple[MessageKind, bytes]:
        """Check a gateway notice (review decision, expiry): signed by a registry GATEWAY key.

        Raises:
            VerificationError: UNKNOWN_KIND (not a gateway kind), UNKNOWN_KEY or BAD_SIGNATURE.
        """
        if not is_gateway_kind(signed.kind):
            raise VerificationError(f"kind {int(signed.kind)} is not written by the gateway", reason="UNKNOWN_KIND")
        ptype = payload_type(signed.kind)
        key = self.gateway_keys.get(signed.key_id)
        if key is None:
            raise VerificationError(f"{signed.key_id!r} is not a gateway key of the registry", reason="UNKNOWN_KEY")
        if not key.verify(signed.signature, pae(ptype, signed.payload)):
            raise VerificationError(f"gateway signature over {ptype} does not verify", reason="BAD_SIGNATURE")
        return signed.kind, signed.payload

    def verify_receipt(self, receipt: envelope_pb2.Receipt) -> envelope_pb2.ReceiptBody:
        """Check the gateway's signature over the receipt body, then parse it.

        Raises:
            VerificationError: UNKNOWN_KEY, BAD_SIGNATURE or PAYLOAD_UNDECODABLE.
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
        return body

    def _platform_key(self, key_id: str) -> VerifyingKey:
        key = self.platform_keys.get(key_id)
        if key is None:
            raise VerificationError(f"{key_id!r} is not a platform key of the registry", reason="UNKNOWN_KEY")
        return key

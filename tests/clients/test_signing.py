"""clients.signing: sign/verify, receipts, the registry key ring. No server needed.

PAE, the suites and the registry's format have their own tests (tests/protocol); here, what the
client makes of them: its Signer, its KeyRing's owners and checks, and its error types.
The helpers at the top (throwaway keys, a tiny registry, receipts as the gateway issues them)
are imported by the other tests of `clients`.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from clients import builders
from clients.errors import RegistryError, VerificationError
from clients.messages import kind_of, parse
from clients.signing import KeyRing, Signer, pae
from mitransfer.v1 import envelope_pb2, messages_pb2

NORTH_AGENCIES = ("110100", "119900")  # platform "north", province 11
SOUTH_AGENCIES = ("440100", "440300")  # platform "south", province 44
ROOT = Path(__file__).resolve().parent.parent.parent


def public_pem(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@dataclass
class Keys:
    """A throwaway registry with two platforms and a gateway, and the private keys behind it."""

    registry: dict[str, Any]
    keyring: KeyRing
    signers: dict[str, Signer]  # by platform id
    gateway: Signer


def make_keys() -> Keys:
    signers = {p: Signer(f"{p}-1", ed25519.Ed25519PrivateKey.generate()) for p in ("north", "south")}
    gateway = Signer("gw-1", ed25519.Ed25519PrivateKey.generate())

    def entry(s: Signer) -> dict[str, str]:
        return {"key_id": s.key_id, "algorithm": "ed25519", "public_key": public_pem(s.private_key)}

    registry = {
        "dev_only": True,
        "gateway": {"keys": [entry(gateway)]},
        "platforms": [
            {"id": p, "name": p, "certificate_uri": f"urn:mitransfer:platform:{p}", "provinces": [prov],
             "keys": [entry(signers[p])]}
            for p, prov in (("north", "11"), ("south", "44"))
        ],
        "agencies": [{"code": c, "name": c, "platform": "north"} for c in NORTH_AGENCIES]
        + [{"code": c, "name": c, "platform": "south"} for c in SOUTH_AGENCIES],
    }
    return Keys(registry, KeyRing.from_registry(registry), signers, gateway)


def issue_receipt(gateway: Signer, signed: envelope_pb2.SignedMessage, sequence: int = 1) -> envelope_pb2.Receipt:
    """A receipt exactly as the gateway issues it for `signed`."""
    header = parse(signed.kind, signed.payload).header
    body = envelope_pb2.ReceiptBody(
        message_id=header.message_id, transfer_id=header.transfer_id, kind=signed.kind, sender=header.sender,
        receiver=header.receiver, payload_sha256=hashlib.sha256(signed.payload).digest(), sequence=sequence,
    )
    body.accepted_at.FromDatetime(dt.datetime.now(dt.UTC))
    data = body.SerializeToString()
    return envelope_pb2.Receipt(body=data, key_id=gateway.key_id,
                                signature=gateway.sign_bytes(pae("mitransfer.v1.ReceiptBody", data)))


def sample_notice(outbound: str = NORTH_AGENCIES[0], inbound: str = SOUTH_AGENCIES[0]) -> messages_pb2.OutboundNotice:
    route = builders.Route.new(outbound, inbound)
    return builders.outbound_notice_accepted(route, builders.sample_person(1), builders.EMPLOYEE, dt.date(2026, 5, 6))


@pytest.fixture(scope="module")
def keys() -> Keys:
    return make_keys()


# --- signing and verifying messages ---------------------------------------------------------------

def test_sign_verify_round_trip(keys: Keys) -> None:
    notice = sample_notice()
    signed = keys.signers["north"].sign(kind_of(notice), notice)
    assert signed.key_id == "north-1" and signed.kind == envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE
    kind, payload = keys.keyring.verify_message(signed)
    assert kind == signed.kind and payload == signed.payload
    assert messages_pb2.OutboundNotice.FromString(payload) == notice
    assert keys.keyring.platform_of_key(signed.key_id) == "north"


def test_signature_covers_pae_of_the_exact_payload(keys: Keys) -> None:
    notice = sample_notice()
    signed = keys.signers["north"].sign(kind_of(notice), notice)
    public = keys.signers["north"].private_key.public_key()
    assert isinstance(public, ed25519.Ed25519PublicKey)
    public.verify(signed.signature, pae("mitransfer.v1.OutboundNotice", signed.payload))  # raises if not


def _flip_payload(s: envelope_pb2.SignedMessage) -> None:
    s.payload = s.payload[:-1] + bytes([s.payload[-1] ^ 1])


def _flip_signature(s: envelope_pb2.SignedMessage) -> None:
    s.signature = bytes([s.signature[0] ^ 1]) + s.signature[1:]


def _swap_kind(s: envelope_pb2.SignedMessage) -> None:
    s.kind = envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE


def _unknown_key(s: envelope_pb2.SignedMessage) -> None:
    s.key_id = "nobody-1"


def _gateway_key(s: envelope_pb2.SignedMessage) -> None:
    s.key_id = "gw-1"  # a gateway key never verifies a platform's message


def _other_platforms_key(s: envelope_pb2.SignedMessage) -> None:
    s.key_id = "south-1"


def _unknown_kind(s: envelope_pb2.SignedMessage) -> None:
    s.kind = 99  # type: ignore[assignment]


def _truncated_signature(s: envelope_pb2.SignedMessage) -> None:
    s.signature = s.signature[:10]


@pytest.mark.parametrize(("tamper", "reason"), [
    (_flip_payload, "BAD_SIGNATURE"),
    (_flip_signature, "BAD_SIGNATURE"),
    (_swap_kind, "BAD_SIGNATURE"),
    (_truncated_signature, "BAD_SIGNATURE"),
    (_other_platforms_key, "BAD_SIGNATURE"),
    (_unknown_key, "UNKNOWN_KEY"),
    (_gateway_key, "UNKNOWN_KEY"),
    (_unknown_kind, "UNKNOWN_KIND"),
])
def test_tampered_messages_fail(keys: Keys, tamper: Any, reason: str) -> None:
    notice = sample_notice()
    signed = keys.signers["north"].sign(kind_of(notice), notice)
    tamper(signed)
    with pytest.raises(VerificationError) as err:
        keys.keyring.verify_message(signed)
    assert err.value.reason == reason


def test_sign_refuses_a_kind_that_is_not_the_messages(keys: Keys) -> None:
    with pytest.raises(ValueError, match="does not match"):
        keys.signers["north"].sign(envelope_pb2.MESSAGE_KIND_FUND_TRANSFER, sample_notice())


def test_signer_serializes_once(keys: Keys) -> None:
    """The signed payload is what SerializeToString gave at signing time, kept verbatim."""
    notice = sample_notice()
    signed = keys.signers["north"].sign(kind_of(notice), notice)
    notice.person.name = "changed after signing"
    keys.keyring.verify_message(signed)  # still verifies: the bytes were taken once


# --- receipts -------------------------------------------------------------------------------------

def test_receipt_round_trip(keys: Keys) -> None:
    notice = sample_notice()
    signed = keys.signers["north"].sign(kind_of(notice), notice)
    body = keys.keyring.verify_receipt(issue_receipt(keys.gateway, signed, sequence=7))
    assert body.message_id == notice.header.message_id and body.sequence == 7
    assert body.payload_sha256 == hashlib.sha256(signed.payload).digest()


@pytest.mark.parametrize(("change", "reason"), [
    ({"body": b"flip"}, "BAD_SIGNATURE"),
    ({"key_id": "north-1"}, "UNKNOWN_KEY"),  # a platform key never signs receipts
    ({"key_id": "gw-9"}, "UNKNOWN_KEY"),
])
def test_bad_receipts_fail(keys: Keys, change: dict[str, Any], reason: str) -> None:
    notice = sample_notice()
    receipt = issue_receipt(keys.gateway, keys.signers["north"].sign(kind_of(notice), notice))
    if change.get("body"):
        receipt.body = receipt.body[:-1] + bytes([receipt.body[-1] ^ 1])
    else:
        receipt.key_id = change["key_id"]
    with pytest.raises(VerificationError) as err:
        keys.keyring.verify_receipt(receipt)
    assert err.value.reason == reason


def test_receipt_signed_as_a_message_type_fails(keys: Keys) -> None:
    """Domain separation: a gateway signature over another payload type is not a receipt."""
    body = envelope_pb2.ReceiptBody(message_id="x").SerializeToString()
    receipt = envelope_pb2.Receipt(body=body, key_id="gw-1",
                                   signature=keys.gateway.sign_bytes(pae("mitransfer.v1.OutboundNotice", body)))
    with pytest.raises(VerificationError):
        keys.keyring.verify_receipt(receipt)


# --- the registry and algorithm agility ----------------------------------------------------------

def test_key_ring_maps_agencies(keys: Keys) -> None:
    assert keys.keyring.agencies_of("north") == NORTH_AGENCIES
    assert keys.keyring.platform_of_agency("440300") == "south"
    assert keys.keyring.platform_of_agency("999999") is None


def test_ecdsa_p256_key_verifies_by_registry_algorithm() -> None:
    k = make_keys()
    ec_signer = Signer("north-ec", ec.generate_private_key(ec.SECP256R1()))
    registry = copy.deepcopy(k.registry)
    registry["platforms"][0]["keys"].append(
        {"key_id": "north-ec", "algorithm": "ecdsa-p256-sha256", "public_key": public_pem(ec_signer.private_key)})
    ring = KeyRing.from_registry(registry)
    notice = sample_notice()
    signed = ec_signer.sign(kind_of(notice), notice)
    assert ring.verify_message(signed)[1] == signed.payload
    _flip_payload(signed)
    with pytest.raises(VerificationError):
        ring.verify_message(signed)


@pytest.mark.parametrize(("edit", "reason"), [
    pytest.param(lambda r: r["agencies"].append({"code": "500100", "name": "x", "platform": "north"}),
                 "AGENCY_OUTSIDE_PROVINCES", id="inconsistent"),
    pytest.param(lambda r: r["gateway"]["keys"][0].update(algorithm="rsa-pss"), "KEY_UNUSABLE", id="unusable-key"),
    pytest.param(lambda r: r.pop("agencies"), "REGISTRY_MALFORMED", id="malformed"),
])
def test_a_bad_registry_is_a_registry_error(edit: Any, reason: str) -> None:
    """Whatever the registry's format refuses, the client reports as its own RegistryError."""
    registry = make_keys().registry
    edit(registry)
    with pytest.raises(RegistryError) as err:
        KeyRing.from_registry(registry)
    assert getattr(err.value.__cause__, "reason", None) == reason


def test_a_bad_registry_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    path.write_text('{"gateway": {"keys": []}, "platforms": []}')
    with pytest.raises(RegistryError, match=f"registry {path}: registry field agencies is missing"):
        KeyRing.load(path)


def test_key_owners_come_from_the_registry(keys: Keys) -> None:
    assert {k: v.owner for k, v in keys.keyring.platform_keys.items()} == {"north-1": "north", "south-1": "south"}
    assert {k: v.owner for k, v in keys.keyring.gateway_keys.items()} == {"gw-1": "gateway"}
    assert keys.keyring.platform_keys["north-1"].algorithm == "ed25519"


def test_dev_registry_and_keys_agree() -> None:
    """The committed dev material: each platform's signing key is the registry's public key."""
    dev = ROOT / "certs" / "dev"
    ring = KeyRing.load(dev / "registry.json")
    assert ring.agencies_of("jiangsu") == ("320100", "320500", "329900")
    assert set(ring.gateway_keys) == {"gateway-dev-1"}
    for platform in ("jiangsu", "zhejiang", "anhui"):
        signer = Signer.from_pem(f"{platform}-dev-1", (dev / "platforms" / f"{platform}-signing.key").read_bytes())
        notice = sample_notice()
        assert ring.verify_message(signer.sign(kind_of(notice), notice))[0] == envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE
        assert ring.platform_of_key(signer.key_id) == platform


def test_missing_registry_file(tmp_path: Path) -> None:
    with pytest.raises(RegistryError):
        KeyRing.load(tmp_path / "absent.json")

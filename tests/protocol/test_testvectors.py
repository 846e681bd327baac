"""proto/testvectors/signatures.json: what integrators in other languages test against holds.

Each check recomputes from the file's own inputs (PAE, fingerprint, parsing, verification) rather
than trusting its outputs, and the reference client verifies the vectors' receipts as a platform
would.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tongsuopy.crypto.asymciphers import ec as sm_ec

from clients.signing import KeyRing
from mitransfer.protocol import idnumbers, suites
from mitransfer.protocol.dsse import pae
from mitransfer.v1 import envelope_pb2, messages_pb2

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / "proto" / "testvectors" / "signatures.json"
DOC: dict[str, Any] = json.loads(FILE.read_text(encoding="utf-8"))
VECTORS = pytest.mark.parametrize("v", DOC["vectors"], ids=[v["suite"] for v in DOC["vectors"]])


def public_key(v: dict[str, Any]) -> suites.VerifyingKey:
    key = v["key"]
    return suites.load_verifying_key(key["key_id"], key["algorithm"], key["public_key_spki_pem"].encode())


def test_every_suite_has_a_vector() -> None:
    assert [v["suite"] for v in DOC["vectors"]] == list(suites.SUITES)


@VECTORS
def test_the_private_key_is_the_public_keys(v: dict[str, Any]) -> None:
    private = suites.load_signing_key(v["key"]["key_id"], v["key"]["private_key_pkcs8_pem"].encode())
    assert private.algorithm == v["suite"]
    assert private.verifying_key().public_pem() == public_key(v).public_pem()


@VECTORS
def test_the_message_signature_covers_pae_of_the_payload(v: dict[str, Any]) -> None:
    m = v["message"]
    payload = bytes.fromhex(m["payload"])
    assert pae(m["payload_type"], payload) == bytes.fromhex(m["pae"])
    assert bytes.fromhex(m["pae"]).startswith(b"DSSEv1 29 mitransfer.v1.TransferRequest %d " % len(payload))
    assert hashlib.sha256(bytes.fromhex(m["pae"])).hexdigest() == m["fingerprint_sha256"]
    assert public_key(v).verify(bytes.fromhex(m["signature"]), bytes.fromhex(m["pae"]))
    signed = envelope_pb2.SignedMessage.FromString(bytes.fromhex(m["signed_message"]))
    assert (envelope_pb2.MessageKind.Name(signed.kind), signed.payload, signed.key_id, signed.signature.hex()) == (
        m["kind"], payload, v["key"]["key_id"], m["signature"])
    request = messages_pb2.TransferRequest.FromString(payload)
    assert request.person.name.startswith("测试人员")
    assert idnumbers.problems(request.person.certificate_number, today=None) == []


@VECTORS
def test_the_receipt_signature_covers_pae_of_the_body(v: dict[str, Any]) -> None:
    r = v["receipt"]
    body = bytes.fromhex(r["body"])
    assert r["payload_type"] == "mitransfer.v1.ReceiptBody"
    assert pae(r["payload_type"], body) == bytes.fromhex(r["pae"])
    assert public_key(v).verify(bytes.fromhex(r["signature"]), bytes.fromhex(r["pae"]))
    parsed = envelope_pb2.ReceiptBody.FromString(body)
    assert parsed.payload_sha256 == hashlib.sha256(bytes.fromhex(v["message"]["payload"])).digest()
    receipt = envelope_pb2.Receipt.FromString(bytes.fromhex(r["receipt"]))
    assert (receipt.body, receipt.key_id, receipt.signature.hex()) == (body, v["key"]["key_id"], r["signature"])


@VECTORS
def test_the_reference_client_verifies_the_receipt(v: dict[str, Any]) -> None:
    keyring = KeyRing.from_registry({"gateway": {"keys": [{
        "key_id": v["key"]["key_id"], "algorithm": v["suite"], "public_key": v["key"]["public_key_spki_pem"]}]},
        "platforms": [], "agencies": []})
    body = keyring.verify_receipt(envelope_pb2.Receipt.FromString(bytes.fromhex(v["receipt"]["receipt"])))
    assert body.sequence == 42


@VECTORS
def test_deterministic_signatures_are_reproduced(v: dict[str, Any]) -> None:
    key = suites.load_signing_key(v["key"]["key_id"], v["key"]["private_key_pkcs8_pem"].encode())
    again = key.sign(bytes.fromhex(v["message"]["pae"])).hex()
    assert (again == v["message"]["signature"]) is v["deterministic_signatures"]


@pytest.mark.parametrize("n", DOC["must_not_verify"], ids=[f"{n['suite']}: {n['why']}" for n in DOC["must_not_verify"]])
def test_negative_vectors_do_not_verify(n: dict[str, Any]) -> None:
    v = next(v for v in DOC["vectors"] if v["suite"] == n["suite"])
    assert not public_key(v).verify(bytes.fromhex(n["signature"]), bytes.fromhex(n["pae"]))


def test_the_sm2_standard_example_verifies_with_the_sm2_vectors_key() -> None:
    example = DOC["sm2_standard_example"]
    numbers = sm_ec.EllipticCurvePublicNumbers(int(example["public_key_x"], 16), int(example["public_key_y"], 16),
                                               sm_ec.SM2())
    key = suites.VerifyingKey("example", suites.SM2_SM3, numbers.public_key())
    assert key.verify(bytes.fromhex(example["signature_der"]), example["message"].encode())
    sm2_vector = next(v for v in DOC["vectors"] if v["suite"] == "sm2-sm3")
    assert public_key(sm2_vector).public_pem() == key.public_pem()


def test_the_file_is_what_the_generator_writes() -> None:
    run = subprocess.run([sys.executable, "scripts/gen_testvectors.py", "--check"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr

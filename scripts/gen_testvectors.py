"""Write proto/testvectors/signatures.json: signatures and receipts for each suite, for integrators.

    python scripts/gen_testvectors.py          # (re)write the file
    python scripts/gen_testvectors.py --check  # exit 1 if the file's fixed parts differ from what this writes

Each vector holds a key pair (fixed private keys, so the file is reproducible), a business message
as its sender serialized it, the PAE bytes its signature covers, the fingerprint, the signature
and the whole SignedMessage; then a receipt for it: the ReceiptBody bytes, their PAE, the
gateway's signature and the whole Receipt. Ed25519 signatures are deterministic (RFC 8032); ECDSA
and SM2 draw a fresh nonce per signature, so `--check` verifies theirs rather than comparing bytes.
Negative vectors are signatures that must NOT verify. tests/protocol/test_testvectors.py holds the
file to all of this; docs/integrating.md tells integrators how to use it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from mitransfer.protocol import idnumbers, suites
from mitransfer.protocol.dsse import fingerprint, pae
from mitransfer.protocol.kinds import RECEIPT_PAYLOAD_TYPE, payload_type
from mitransfer.v1 import envelope_pb2, messages_pb2, types_pb2

OUT = Path(__file__).resolve().parent.parent / "proto" / "testvectors" / "signatures.json"
ACCEPTED_AT = dt.datetime(2026, 11, 23, 2, 30, 0, 123456, tzinfo=dt.UTC)
CREATED_AT = dt.datetime(2026, 11, 23, 2, 29, 58, tzinfo=dt.UTC)

# GM/T 0003.5-2012's example on the recommended curve: the SM2 vectors use its private key, and
# the file repeats its signature (made with a nonce k the standard publishes) for cross-checks.
SM2_STANDARD = {
    "standard": "GM/T 0003.5-2012 (GB/T 32918.2-2016), signature example on the recommended curve sm2p256v1",
    "user_id": "1234567812345678",
    "private_key_d": "3945208f7b2144b13f36e38ac6d39f95889393692860b51a42fb81ef4df7c5b8",
    "public_key_x": "09f9df311e5421a150dd7d161e4bc5c672179fad1833fc076bb08ff356f35020",
    "public_key_y": "ccea490ce26775a52dc6ea718cc1aa600aed05fbf35e084a6632f6072da9ad13",
    "message": "message digest",
    "k": "59276e27d506861a16680f3ad9c02dccef3cc1fa3cdbe4ce6d54b80deac1bc21",
    "r": "f5a03b0648d2c4630eeac513e1bb81a15944da3827d5b74143ac7eaceee720b3",
    "s": "b1b6aa29df212fd8763182bc0d421ca1bb9038fd1f7f42d4840b69c485bbc1aa",
}


def _seed(label: str) -> bytes:
    return hashlib.sha256(f"transfer-gateway test vector {label}".encode()).digest()


def fixed_private_key(suite: suites.Suite) -> object:
    """The vector's private key: derived from a fixed label (SM2: the standard's example key)."""
    if suite is suites.ED25519:
        return ed25519.Ed25519PrivateKey.from_private_bytes(_seed("ed25519"))
    if suite is suites.ECDSA_P256_SHA256:
        order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
        return ec.derive_private_key(int.from_bytes(_seed("p256"), "big") % order, ec.SECP256R1())
    if suite is suites.SM2_SM3:
        from tongsuopy.crypto.asymciphers import ec as sm_ec

        return sm_ec.derive_private_key(int(SM2_STANDARD["private_key_d"], 16), sm_ec.SM2())
    raise ValueError(f"no fixed key for suite {suite.name}")


def sample_request() -> messages_pb2.TransferRequest:
    """A synthetic TransferRequest (转移申请): 测试人员 with a valid, made-up ID number."""
    header = messages_pb2.Header(message_id="01JDTESTVECTOR0000000000001", transfer_id="T-TESTVECTOR-0001",
                                 sender="330100", receiver="320100")
    header.created_at.FromDatetime(CREATED_AT)
    person = types_pb2.Person(certificate_type=types_pb2.CERTIFICATE_TYPE_RESIDENT_ID_CARD,
                              certificate_number=idnumbers.make("320102", dt.date(1985, 6, 15), 123),
                              name="测试人员0001")
    return messages_pb2.TransferRequest(
        header=header, person=person,
        outbound_insurance_type=types_pb2.INSURANCE_TYPE_EMPLOYEE_BASIC,
        inbound_insurance_type=types_pb2.INSURANCE_TYPE_EMPLOYEE_BASIC,
        channel=messages_pb2.TransferRequest.CHANNEL_ONLINE,
    )


def vector(suite: suites.Suite) -> dict[str, Any]:
    """One suite's vector: the platform and the gateway sign with the same fixed key here."""
    key = suites.signing_key(f"testvector-{suite.name}", fixed_private_key(suite))
    kind = envelope_pb2.MESSAGE_KIND_TRANSFER_REQUEST
    ptype = payload_type(kind)
    payload = sample_request().SerializeToString()
    message_pae = pae(ptype, payload)
    signature = key.sign(message_pae)
    signed = envelope_pb2.SignedMessage(kind=kind, payload=payload, key_id=key.key_id, signature=signature)
    body = envelope_pb2.ReceiptBody(
        message_id="01JDTESTVECTOR0000000000001", transfer_id="T-TESTVECTOR-0001", kind=kind,
        sender="330100", receiver="320100", payload_sha256=hashlib.sha256(payload).digest(), sequence=42,
    )
    body.accepted_at.FromDatetime(ACCEPTED_AT)
    body_bytes = body.SerializeToString()
    receipt_pae = pae(RECEIPT_PAYLOAD_TYPE, body_bytes)
    receipt_signature = key.sign(receipt_pae)
    receipt = envelope_pb2.Receipt(body=body_bytes, key_id=key.key_id, signature=receipt_signature)
    return {
        "suite": suite.name,
        "key": {
            "key_id": key.key_id,
            "algorithm": suite.name,
            "private_key_pkcs8_pem": key.private_pem().decode(),
            "public_key_spki_pem": key.verifying_key().public_pem().decode(),
        },
        "message": {
            "kind": envelope_pb2.MessageKind.Name(kind),
            "payload_type": ptype,
            "payload": payload.hex(),
            "pae": message_pae.hex(),
            "fingerprint_sha256": fingerprint(ptype, payload).hex(),
            "signature": signature.hex(),
            "signed_message": signed.SerializeToString().hex(),
        },
        "receipt": {
            "payload_type": RECEIPT_PAYLOAD_TYPE,
            "body": body_bytes.hex(),
            "pae": receipt_pae.hex(),
            "signature": receipt_signature.hex(),
            "receipt": receipt.SerializeToString().hex(),
        },
        "deterministic_signatures": suite is suites.ED25519,
    }


def negatives(vectors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Signatures that must not verify: each changes one thing a verifier must bind."""
    found = []
    for v in vectors:
        payload = bytes.fromhex(v["message"]["payload"])
        signature = v["message"]["signature"]
        other_type = payload_type(envelope_pb2.MESSAGE_KIND_WITHDRAWAL)
        found += [
            {"suite": v["suite"], "key_id": v["key"]["key_id"], "why": "the payload type is another kind's",
             "pae": pae(other_type, payload).hex(), "signature": signature},
            {"suite": v["suite"], "key_id": v["key"]["key_id"], "why": "one payload byte changed",
             "pae": pae(v["message"]["payload_type"], payload[:-1] + bytes([payload[-1] ^ 1])).hex(),
             "signature": signature},
            {"suite": v["suite"], "key_id": v["key"]["key_id"],
             "why": "signed over the payload alone, without PAE", "pae": v["message"]["pae"],
             "signature": suites.load_signing_key("k", v["key"]["private_key_pkcs8_pem"].encode()).sign(payload).hex()},
        ]
    return found


def document() -> dict[str, Any]:
    vectors = [vector(s) for s in (suites.ED25519, suites.ECDSA_P256_SHA256, suites.SM2_SM3)]
    standard = dict(SM2_STANDARD)
    standard["signature_der"] = encode_dss_signature(int(standard["r"], 16), int(standard["s"], 16)).hex()
    return {
        "description": "transfer-gateway signature test vectors (generated by scripts/gen_testvectors.py). "
                       "Every signature covers PAE(payload_type, payload) = 'DSSEv1 ' + len(type) + ' ' + type + ' ' "
                       "+ len(payload) + ' ' + payload (lengths in decimal bytes). Bytes are hex. Keys are for "
                       "testing only. ECDSA and SM2 signatures are DER SEQUENCE{r, s}; SM2 uses SM3 and the user id "
                       "1234567812345678.",
        "vectors": vectors,
        "must_not_verify": negatives(vectors),
        "sm2_standard_example": standard,
    }


def _fixed_parts(doc: dict[str, Any]) -> Any:
    """What must be byte-identical between runs: everything but randomized signatures."""
    fixed = json.loads(json.dumps(doc))
    for v in fixed["vectors"]:
        if not v["deterministic_signatures"]:
            for part, field in (("message", "signature"), ("message", "signed_message"),
                                ("receipt", "signature"), ("receipt", "receipt")):
                v[part][field] = None
    fixed["must_not_verify"] = [dict(n, signature=None) for n in fixed["must_not_verify"]]
    return fixed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the file instead of writing it")
    args = parser.parse_args(argv)
    doc = document()
    if args.check:
        on_disk = json.loads(OUT.read_text(encoding="utf-8"))
        if _fixed_parts(on_disk) != _fixed_parts(doc):
            print(f"{OUT} is stale: run python scripts/gen_testvectors.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

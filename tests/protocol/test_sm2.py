"""SM2 with SM3 against the standard's own example and an independent implementation.

GM/T 0003.5-2012 (and GB/T 32918.2's annex on the recommended curve) signs "message digest" with a
known private key d and nonce k under the default user id "1234567812345678" and prints r and s.
tongsuopy cannot be given k, so the example is checked three ways: the suite verifies the
published (r, s); gmssl (pure Python, written apart from Tongsuo) reproduces r and s from d and
k; and each library verifies the other's signatures over random data.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from gmssl import sm2 as gmssl_sm2
from hypothesis import given, settings
from hypothesis import strategies as st

from mitransfer.protocol import suites

# GM/T 0003.5-2012, the signature example on the recommended curve (sm2p256v1).
D = 0x3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8
PUBLIC_X = 0x09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020
PUBLIC_Y = 0xCCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13
K = "59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21"
MESSAGE = b"message digest"
R = 0xF5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3
S = 0xB1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA
N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123


def standard_key() -> suites.SigningKey:
    from tongsuopy.crypto.asymciphers import ec

    return suites.signing_key("gmt-0003.5", ec.derive_private_key(D, ec.SM2()))


def gmssl_of(public: Any, private: int | None = None) -> gmssl_sm2.CryptSM2:
    numbers = public.public_numbers()
    return gmssl_sm2.CryptSM2(private_key=f"{private:064x}" if private else "",
                              public_key=f"{numbers.x:064x}{numbers.y:064x}")


def test_the_standards_key_is_the_standards_public_key() -> None:
    numbers = standard_key().verifying_key().key.public_numbers()
    assert (numbers.x, numbers.y) == (PUBLIC_X, PUBLIC_Y)


def test_the_suite_verifies_the_standards_signature() -> None:
    public = standard_key().verifying_key()
    assert public.verify(encode_dss_signature(R, S), MESSAGE)
    assert not public.verify(encode_dss_signature(R, S), b"message digesT")
    assert not public.verify(encode_dss_signature(R, (S + 1) % N), MESSAGE)


def test_gmssl_reproduces_the_standards_signature_from_d_and_k() -> None:
    public = standard_key().verifying_key().key
    assert gmssl_of(public, D).sign_with_sm3(MESSAGE, K) == f"{R:064x}{S:064x}"


@settings(max_examples=8, deadline=None)
@given(data=st.binary(max_size=200))
def test_each_library_verifies_the_others_signatures(data: bytes) -> None:
    key = suites.signing_key("k", suites.SM2_SM3.generate())
    other = gmssl_of(key.verifying_key().key, key.key.private_numbers().private_value)
    r, s = decode_dss_signature(key.sign(data))
    assert other.verify_with_sm3(f"{r:064x}{s:064x}", data)
    theirs = other.sign_with_sm3(data)
    assert key.verifying_key().verify(encode_dss_signature(int(theirs[:64], 16), int(theirs[64:], 16)), data)


@pytest.mark.parametrize("signature", [
    # r and s both have their top bit set, so each needs one 0x00: a second one is padding.
    pytest.param(b"\x30\x47\x02\x22\x00\x00" + R.to_bytes(32, "big") + b"\x02\x21\x00" + S.to_bytes(32, "big"),
                 id="needless-leading-zero"),
    pytest.param(encode_dss_signature(R, S + N), id="s-above-the-order"),
    pytest.param(encode_dss_signature(0, S), id="r-zero"),
    pytest.param(encode_dss_signature(R, S) + b"\x00", id="trailing-byte"),
    pytest.param(R.to_bytes(32, "big") + S.to_bytes(32, "big"), id="raw-r-s-not-der"),
])
def test_only_the_canonical_der_encoding_verifies(signature: bytes) -> None:
    assert not standard_key().verifying_key().verify(signature, MESSAGE)


def test_the_canonical_encoding_of_the_example_verifies() -> None:
    """The control for the table above: the same r and s, minimally encoded, pass."""
    der = encode_dss_signature(R, S)
    assert der[:2] == b"\x30\x46" and standard_key().verifying_key().verify(der, MESSAGE)


def test_sm2_keys_are_pkcs8_and_spki_with_the_sm2_curve() -> None:
    key = standard_key()
    pem = key.verifying_key().public_pem()
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert suites.load_signing_key("again", key.private_pem()).suite is suites.SM2_SM3
    assert suites.load_verifying_key("again", "sm2-sm3", pem).verify(encode_dss_signature(R, S), MESSAGE)


WITHOUT_TONGSUOPY = textwrap.dedent("""
    import json, sys
    sys.modules["tongsuopy"] = None  # as if the extra were not installed: importing it fails
    from mitransfer.protocol import registry, suites
    from mitransfer.protocol.errors import RegistryFormatError, UnusableKey
    out = {"available": [s.name for s in suites.available_suites()]}
    doc = json.loads(sys.stdin.read())
    try:
        registry.from_dict(doc)
    except RegistryFormatError as exc:
        out["registry"] = [exc.reason, exc.field, str(exc)]
    try:
        suites.load_signing_key("k", doc["private_pem"].encode())
    except UnusableKey as exc:
        out["signing"] = [exc.reason, str(exc)]
    print(json.dumps(out))
""")


def test_without_the_extra_sm2_entries_are_refused_naming_it() -> None:
    import json

    key = standard_key()
    doc = {"gateway": {"keys": [{"key_id": "g", "algorithm": "sm2-sm3",
                                 "public_key": key.verifying_key().public_pem().decode()}]},
           "platforms": [], "agencies": [], "private_pem": key.private_pem().decode()}
    run = subprocess.run([sys.executable, "-c", WITHOUT_TONGSUOPY], input=json.dumps(doc), capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": os.getcwd()}, check=True)
    out = json.loads(run.stdout)
    assert out["available"] == ["ed25519", "ecdsa-p256-sha256"]
    reason, field, message = out["registry"]
    assert (reason, field) == ("KEY_UNUSABLE", "gateway.keys[0]")
    assert "transfer-gateway[sm]" in message and "tongsuopy" in message
    assert out["signing"][0] == "KEY_UNREADABLE" and "transfer-gateway[sm]" in out["signing"][1]

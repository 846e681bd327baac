"""Signature suites: every suite in the table signs and verifies, reads its PEM keys, refuses keys
of another algorithm, and answers False (never an exception) to any bad signature."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from mitransfer.protocol import suites
from mitransfer.protocol.errors import UnusableKey

ALL = pytest.mark.parametrize("suite", list(suites.SUITES.values()), ids=list(suites.SUITES))


def private_pem(key: object, password: bytes | None = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,  # type: ignore[attr-defined]
                             encryption)


def public_pem(key: object) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_the_table_names_each_suite_by_its_registry_name() -> None:
    assert set(suites.SUITES) == {"ed25519", "ecdsa-p256-sha256", "sm2-sm3"}
    assert all(name == s.name for name, s in suites.SUITES.items())
    assert suites.suite("ed25519") is suites.ED25519


@ALL
def test_sign_then_verify(suite: suites.Suite) -> None:
    signer = suites.signing_key("k", suite.generate())
    assert signer.suite is suite and signer.algorithm == suite.name
    signature = signer.sign(b"DSSEv1 4 type 4 body")
    public = signer.verifying_key()
    assert public.key_id == "k" and public.suite is suite
    assert public.verify(signature, b"DSSEv1 4 type 4 body")
    assert not public.verify(signature, b"DSSEv1 4 type 4 bodY")


@ALL
@settings(max_examples=25, deadline=None)
@given(data=st.binary(max_size=300), flip=st.integers(0, 8 * 300 - 1))
def test_any_flipped_bit_fails(suite: suites.Suite, data: bytes, flip: int) -> None:
    signer = suites.signing_key("k", suite.generate())
    signature = signer.sign(data)
    public = signer.verifying_key()
    assert public.verify(signature, data)
    if data:
        i = flip % (8 * len(data))
        changed = bytearray(data)
        changed[i // 8] ^= 1 << (i % 8)
        assert not public.verify(signature, bytes(changed))
    j = flip % (8 * len(signature))
    bad = bytearray(signature)
    bad[j // 8] ^= 1 << (j % 8)
    assert not public.verify(bytes(bad), data)


@ALL
@pytest.mark.parametrize("signature", [b"", b"\x00", b"\x30\x02\x02\x00", bytes(64), bytes(1000)])
def test_malformed_signatures_are_false_not_errors(suite: suites.Suite, signature: bytes) -> None:
    public = suites.signing_key("k", suite.generate()).verifying_key()
    assert public.verify(signature, b"data") is False


@ALL
def test_another_keys_signature_fails(suite: suites.Suite) -> None:
    a, b = suites.signing_key("a", suite.generate()), suites.signing_key("b", suite.generate())
    assert not b.verifying_key().verify(a.sign(b"data"), b"data")


@ALL
def test_pem_keys_load_under_their_suite(suite: suites.Suite) -> None:
    private = suite.generate()
    signer = suites.load_signing_key("k", suite.private_pem(private))
    assert signer.suite is suite
    assert signer.private_pem() == suite.private_pem(private)
    pem = suite.public_pem(suite.public_of(private))
    public = suites.load_verifying_key("k", suite.name, pem)
    assert public.algorithm == suite.name
    assert public.public_pem() == pem == signer.verifying_key().public_pem()
    assert public.verify(signer.sign(b"x"), b"x")


@ALL
def test_a_key_declared_as_another_algorithm_is_refused(suite: suites.Suite) -> None:
    pem = suite.public_pem(suite.public_of(suite.generate()))
    for other in suites.SUITES.values():
        if other is not suite:
            with pytest.raises(UnusableKey) as err:
                suites.load_verifying_key("k", other.name, pem)
            assert err.value.reason == "KEY_ALGORITHM_MISMATCH"
            assert str(err.value) == f"key k is not an {other.name} public key"


@pytest.mark.parametrize(("algorithm", "pem", "reason"), [
    pytest.param("rsa-pss", public_pem(ed25519.Ed25519PrivateKey.generate()), "UNKNOWN_ALGORITHM", id="unknown"),
    pytest.param("ED25519", public_pem(ed25519.Ed25519PrivateKey.generate()), "UNKNOWN_ALGORITHM", id="upper-case"),
    pytest.param("ed25519", b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n", "KEY_UNREADABLE",
                 id="bad-base64"),
    pytest.param("ed25519", b"", "KEY_UNREADABLE", id="empty"),
    pytest.param("ed25519", private_pem(ed25519.Ed25519PrivateKey.generate()), "KEY_UNREADABLE", id="private-pem"),
    pytest.param("ecdsa-p256-sha256", public_pem(ec.generate_private_key(ec.SECP384R1())), "KEY_ALGORITHM_MISMATCH",
                 id="p384-as-p256"),
])
def test_unusable_public_keys(algorithm: str, pem: bytes, reason: str) -> None:
    with pytest.raises(UnusableKey) as err:
        suites.load_verifying_key("k", algorithm, pem)
    assert err.value.reason == reason
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(("pem", "reason"), [
    pytest.param(b"not a pem", "KEY_UNREADABLE", id="garbage"),
    pytest.param(private_pem(ed25519.Ed25519PrivateKey.generate(), b"secret"), "KEY_UNREADABLE", id="encrypted"),
    pytest.param(public_pem(ed25519.Ed25519PrivateKey.generate()), "KEY_UNREADABLE", id="public-pem"),
    pytest.param(private_pem(ec.generate_private_key(ec.SECP384R1())), "KEY_ALGORITHM_MISMATCH", id="p384"),
    pytest.param(private_pem(rsa.generate_private_key(65537, 2048)), "KEY_ALGORITHM_MISMATCH", id="rsa"),
])
def test_unusable_signing_keys(pem: bytes, reason: str) -> None:
    with pytest.raises(UnusableKey) as err:
        suites.load_signing_key("k", pem)
    assert err.value.reason == reason


@pytest.mark.parametrize("key", [object(), "ed25519", ed25519.Ed25519PrivateKey.generate().public_key()],
                         ids=["object", "string", "public-key"])
def test_signing_key_needs_a_private_key_of_a_suite(key: object) -> None:
    with pytest.raises(UnusableKey) as err:
        suites.signing_key("k", key)
    assert err.value.reason == "KEY_ALGORITHM_MISMATCH"

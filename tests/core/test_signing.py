"""gateway.core.signing: the gateway's LocalSigner and its configuration error. Suites and PAE
are tested in tests/protocol."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.core.signing import LocalSigner, SignatureKeyError, pae


def _pkcs8(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.mark.parametrize(("key", "algorithm"), [
    (ed25519.Ed25519PrivateKey.generate(), "ed25519"),
    (ec.generate_private_key(ec.SECP256R1()), "ecdsa-p256-sha256"),
])
def test_local_signer_signs_what_its_verifying_key_verifies(key: ed25519.Ed25519PrivateKey, algorithm: str) -> None:
    signer = LocalSigner.from_pem("gw-1", _pkcs8(key))
    assert (signer.key_id, signer.algorithm) == ("gw-1", algorithm)
    data = pae("mitransfer.v1.ReceiptBody", b"body")
    public = signer.verifying_key()
    assert public.key_id == "gw-1" and public.verify(signer.sign(data), data)


@pytest.mark.parametrize("pem", [_pkcs8(rsa.generate_private_key(65537, 2048)), b"not a key"], ids=["rsa", "garbage"])
def test_an_unusable_signing_key_is_a_signature_key_error(pem: bytes) -> None:
    with pytest.raises(SignatureKeyError, match="signing key gw-1"):
        LocalSigner.from_pem("gw-1", pem)

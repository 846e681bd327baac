"""Signature suites: the algorithms a registry entry may name, as one table.

A suite says how to read a key of its algorithm from PEM, how to sign and how to verify. Which
suite verifies a key is fixed by the registry entry's `algorithm`, never by the message, so a
sender cannot choose a weaker one. Keys are the signing library's own objects (pyca/cryptography
for the suites here); a suite's functions only ever receive keys its `is_public_key` or
`is_private_key` accepted.

Adding an algorithm is one more `Suite` in `SUITES`: a name, its two key tests, `sign`, `verify`
and `generate`, and, for a library other than pyca/cryptography, its own PEM readers.

SM2 with SM3 (GM/T 0003-2012, GB/T 32918) is such a suite: pyca/cryptography has SM3 but not
SM2, so it comes from tongsuopy (the Tongsuo binding, written in pyca's style), an optional
extra (`pip install 'transfer-gateway[sm]'`). Without it the suite stays in the table, so a
registry naming it is understood, but every use of it raises `UnusableKey` (SUITE_UNAVAILABLE)
naming the extra. Signatures are DER SEQUENCE{r, s} over SM3(Z ‖ data), Z computed with the
standard's default user id "1234567812345678" (what Tongsuo uses when none is set; the GM/T
0003.5 example in the tests proves it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from mitransfer.protocol.errors import UnusableKey
from mitransfer.protocol.validity import ALWAYS, KeyWindow

SM_EXTRA: Final = "transfer-gateway[sm]"
"""The optional extra that brings SM2 (tongsuopy): `pip install 'transfer-gateway[sm]'`."""


def _read_public_pem(pem: bytes) -> object:
    """An SPKI PEM public key of any type pyca/cryptography knows. Raises ValueError."""
    try:
        return serialization.load_pem_public_key(pem)
    except UnsupportedAlgorithm as exc:
        raise ValueError(str(exc)) from exc


def _read_private_pem(pem: bytes) -> object:
    """An unencrypted PKCS8 PEM private key of any type pyca/cryptography knows. Raises ValueError."""
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (UnsupportedAlgorithm, TypeError) as exc:  # TypeError: the key is encrypted
        raise ValueError(str(exc)) from exc


def _public_of(private_key: Any) -> object:
    return private_key.public_key()


def _spki_pem(public_key: Any) -> bytes:
    data: bytes = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return data


def _pkcs8_pem(private_key: Any) -> bytes:
    data: bytes = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())
    return data


@dataclass(frozen=True)
class Suite:
    """One signature algorithm as a registry entry names it, and how to use its keys."""

    name: str
    """The registry's `algorithm` value: "ed25519"."""
    is_public_key: Callable[[object], bool] = field(repr=False)
    """Whether a library object is a public key of this suite."""
    is_private_key: Callable[[object], bool] = field(repr=False)
    """Whether a library object is a private key of this suite."""
    sign: Callable[[Any, bytes], bytes] = field(repr=False)
    """(private key, data) → signature."""
    verify: Callable[[Any, bytes, bytes], bool] = field(repr=False)
    """(public key, signature, data) → whether it verifies; False, never an exception, for any bad signature."""
    generate: Callable[[], object] = field(repr=False)
    """A new private key (development keys, tests)."""
    read_public: Callable[[bytes], object] = field(default=_read_public_pem, repr=False)
    """SPKI PEM → public key object; raises ValueError if it cannot be read."""
    read_private: Callable[[bytes], object] = field(default=_read_private_pem, repr=False)
    """Unencrypted PKCS8 PEM → private key object; raises ValueError if it cannot be read."""
    public_of: Callable[[Any], object] = field(default=_public_of, repr=False)
    """Private key → its public key."""
    public_pem: Callable[[Any], bytes] = field(default=_spki_pem, repr=False)
    """Public key → SPKI PEM."""
    private_pem: Callable[[Any], bytes] = field(default=_pkcs8_pem, repr=False)
    """Private key → unencrypted PKCS8 PEM (for key files: written 0600 by whoever writes them)."""
    unavailable: Callable[[], str | None] = field(default=lambda: None, repr=False)
    """None if the suite can be used here, else why not and how to fix it (a missing extra)."""


# --- Ed25519 (RFC 8032) ---------------------------------------------------------------------------

def _is_ed25519_public(key: object) -> bool:
    return isinstance(key, ed25519.Ed25519PublicKey)


def _is_ed25519_private(key: object) -> bool:
    return isinstance(key, ed25519.Ed25519PrivateKey)


def _ed25519_sign(key: ed25519.Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


def _ed25519_verify(key: ed25519.Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


# --- ECDSA on P-256 with SHA-256, DER-encoded signatures (FIPS 186-5) -----------------------------

def _is_p256_public(key: object) -> bool:
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)


def _is_p256_private(key: object) -> bool:
    return isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)


def _p256_sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def _p256_verify(key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


# --- SM2 with SM3 (GM/T 0003-2012 / GB/T 32918.2-2016), DER-encoded signatures -----------------
# tongsuopy is imported on first use, so a gateway without the extra starts, and refuses SM2
# registry entries with a message naming the extra instead of failing at import.

_SM2_ORDER: Final = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
_tongsuo_modules: dict[str, Any] = {}


def _tongsuo() -> dict[str, Any] | None:
    """tongsuopy's ec, hashes and serialization modules, or None if the extra is not installed."""
    if not _tongsuo_modules:
        try:
            from tongsuopy.crypto import exceptions, hashes, serialization
            from tongsuopy.crypto.asymciphers import ec as sm_ec
        except ImportError:
            return None
        _tongsuo_modules.update(ec=sm_ec, hashes=hashes, serialization=serialization, exceptions=exceptions)
    return _tongsuo_modules


def _sm2_unavailable() -> str | None:
    if _tongsuo() is not None:
        return None
    return f"SM2 needs the optional extra {SM_EXTRA} (tongsuopy): pip install '{SM_EXTRA}'"


def _sm2_modules() -> dict[str, Any]:
    modules = _tongsuo()
    if modules is None:
        raise UnusableKey(_sm2_unavailable() or "", reason="SUITE_UNAVAILABLE")
    return modules


def _is_sm2_public(key: object) -> bool:
    modules = _tongsuo()
    return (modules is not None and isinstance(key, modules["ec"].EllipticCurvePublicKey)
            and isinstance(key.curve, modules["ec"].SM2))


def _is_sm2_private(key: object) -> bool:
    modules = _tongsuo()
    return (modules is not None and isinstance(key, modules["ec"].EllipticCurvePrivateKey)
            and isinstance(key.curve, modules["ec"].SM2))


def _sm2_signature_is_canonical(signature: bytes) -> bool:
    """DER SEQUENCE{r, s}, minimally encoded, 0 < r, s < n: Tongsuo never sees anything else (its
    ASN.1 errors surface as InternalError), and one signature has one encoding only."""
    try:
        r, s = decode_dss_signature(signature)
    except ValueError:
        return False
    return 0 < r < _SM2_ORDER and 0 < s < _SM2_ORDER and encode_dss_signature(r, s) == signature


def _sm2_sign(key: Any, data: bytes) -> bytes:
    modules = _sm2_modules()
    signature: bytes = key.sign(data, modules["ec"].ECDSA(modules["hashes"].SM3()))
    return signature


def _sm2_verify(key: Any, signature: bytes, data: bytes) -> bool:
    if not _sm2_signature_is_canonical(signature):
        return False
    modules = _sm2_modules()
    errors = modules["exceptions"]
    try:
        key.verify(signature, data, modules["ec"].ECDSA(modules["hashes"].SM3()))
    except (errors.InvalidSignature, errors.InternalError, ValueError):
        return False
    return True


def _sm2_generate() -> object:
    modules = _sm2_modules()
    return modules["ec"].generate_private_key(modules["ec"].SM2())


def _sm2_read_public(pem: bytes) -> object:
    modules = _sm2_modules()
    try:
        return modules["serialization"].load_pem_public_key(pem)
    except (modules["exceptions"].UnsupportedAlgorithm, modules["exceptions"].InternalError) as exc:
        raise ValueError(str(exc)) from exc


def _sm2_read_private(pem: bytes) -> object:
    modules = _sm2_modules()
    try:
        return modules["serialization"].load_pem_private_key(pem, password=None)
    except (modules["exceptions"].UnsupportedAlgorithm, modules["exceptions"].InternalError, TypeError) as exc:
        raise ValueError(str(exc)) from exc


def _sm2_public_pem(public_key: Any) -> bytes:
    formats = _sm2_modules()["serialization"]
    data: bytes = public_key.public_bytes(formats.Encoding.PEM, formats.PublicFormat.SubjectPublicKeyInfo)
    return data


def _sm2_private_pem(private_key: Any) -> bytes:
    formats = _sm2_modules()["serialization"]
    data: bytes = private_key.private_bytes(formats.Encoding.PEM, formats.PrivateFormat.PKCS8, formats.NoEncryption())
    return data


ED25519: Final = Suite(
    "ed25519", _is_ed25519_public, _is_ed25519_private, _ed25519_sign, _ed25519_verify,
    ed25519.Ed25519PrivateKey.generate,
)
ECDSA_P256_SHA256: Final = Suite(
    "ecdsa-p256-sha256", _is_p256_public, _is_p256_private, _p256_sign, _p256_verify,
    lambda: ec.generate_private_key(ec.SECP256R1()),
)

SM2_SM3: Final = Suite(
    "sm2-sm3", _is_sm2_public, _is_sm2_private, _sm2_sign, _sm2_verify, _sm2_generate,
    read_public=_sm2_read_public, read_private=_sm2_read_private,
    public_pem=_sm2_public_pem, private_pem=_sm2_private_pem, unavailable=_sm2_unavailable,
)

SUITES: Final[Mapping[str, Suite]] = MappingProxyType(
    {s.name: s for s in (ED25519, ECDSA_P256_SHA256, SM2_SM3)})
"""Every suite a registry may name, by name (usable here or not: see `Suite.unavailable`)."""


def available_suites() -> tuple[Suite, ...]:
    """The suites this installation can use."""
    return tuple(s for s in SUITES.values() if s.unavailable() is None)


def suite(name: str) -> Suite:
    """The suite a registry entry names.

    Raises:
        UnusableKey: UNKNOWN_ALGORITHM (no suite of that name) or SUITE_UNAVAILABLE (a suite whose
            library is an extra not installed here; the message names the extra).
    """
    found = SUITES.get(name)
    if found is None:
        known = ", ".join(SUITES)
        raise UnusableKey(f"unknown signature algorithm {name[:40]!r} (known: {known})", reason="UNKNOWN_ALGORITHM")
    missing = found.unavailable()
    if missing is not None:
        raise UnusableKey(missing, reason="SUITE_UNAVAILABLE")
    return found


@dataclass(frozen=True)
class VerifyingKey:
    """A public key by its key id, with the suite that verifies it and, from the registry, the
    window in which it may sign (`mitransfer.protocol.validity`)."""

    key_id: str
    suite: Suite
    key: Any  # the library's public key object; `suite.is_public_key(key)`
    window: KeyWindow = ALWAYS

    @property
    def algorithm(self) -> str:
        return self.suite.name

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True if `signature` is this key's signature over `data` under its suite (whenever made:
        `verify_at` judges the time too)."""
        return self.suite.verify(self.key, signature, data)

    def verify_at(self, signature: bytes, data: bytes, when: dt.datetime) -> bool:
        """`verify`, for something accepted at `when` (a timezone-aware datetime).

        Raises:
            mitransfer.protocol.validity.KeyNotValid: the key was not valid at `when` (KEY_EXPIRED,
                KEY_REVOKED or KEY_NOT_YET_VALID, naming the key): the signature does not count.
        """
        self.window.check(self.key_id, when)
        return self.verify(signature, data)

    def public_pem(self) -> bytes:
        """The key as SPKI PEM."""
        return self.suite.public_pem(self.key)


@dataclass(frozen=True)
class SigningKey:
    """A private key by its key id, with the suite that signs with it."""

    key_id: str
    suite: Suite
    key: Any  # the library's private key object; `suite.is_private_key(key)`

    @property
    def algorithm(self) -> str:
        return self.suite.name

    def sign(self, data: bytes) -> bytes:
        """This key's signature over `data` (callers sign PAE, see `mitransfer.protocol.dsse`)."""
        return self.suite.sign(self.key, data)

    def verifying_key(self) -> VerifyingKey:
        """The public half, under the same key id and suite."""
        return VerifyingKey(self.key_id, self.suite, self.suite.public_of(self.key))

    def private_pem(self) -> bytes:
        """The key as unencrypted PKCS8 PEM (a secret: write it to a file of mode 0600)."""
        return self.suite.private_pem(self.key)


def load_verifying_key(key_id: str, algorithm: str, pem: bytes, window: KeyWindow = ALWAYS) -> VerifyingKey:
    """Read an SPKI PEM public key that must be a key of the named algorithm.

    Raises:
        UnusableKey: UNKNOWN_ALGORITHM, SUITE_UNAVAILABLE, KEY_UNREADABLE or KEY_ALGORITHM_MISMATCH.
    """
    chosen = suite(algorithm)
    try:
        key = chosen.read_public(pem)
    except ValueError as exc:
        if any(_reads_public(other, pem) for other in available_suites() if other is not chosen):
            raise UnusableKey(f"key {key_id} is not an {chosen.name} public key",
                              reason="KEY_ALGORITHM_MISMATCH") from exc
        raise UnusableKey(f"key {key_id} is not a readable PEM public key: {exc}", reason="KEY_UNREADABLE") from exc
    if not chosen.is_public_key(key):
        raise UnusableKey(f"key {key_id} is not an {chosen.name} public key", reason="KEY_ALGORITHM_MISMATCH")
    return VerifyingKey(key_id, chosen, key, window)


def _reads_public(candidate: Suite, pem: bytes) -> bool:
    """Whether another suite's library reads `pem` as its own public key (a key of another
    algorithm than declared, which pyca and Tongsuo each call unreadable)."""
    try:
        return candidate.is_public_key(candidate.read_public(pem))
    except ValueError:
        return False


def signing_key(key_id: str, key: object) -> SigningKey:
    """Wrap a library private key object in the suite that holds it.

    Raises:
        UnusableKey: (KEY_ALGORITHM_MISMATCH) no suite holds a key of this type.
    """
    for candidate in available_suites():
        if candidate.is_private_key(key):
            return SigningKey(key_id, candidate, key)
    raise UnusableKey(f"signing key {key_id}: a {type(key).__name__} is not a private key of any suite "
                      f"({', '.join(s.name for s in available_suites())})", reason="KEY_ALGORITHM_MISMATCH")


def load_signing_key(key_id: str, pem: bytes) -> SigningKey:
    """Read an unencrypted PKCS8 PEM private key; its suite is the one that holds it.

    Raises:
        UnusableKey: KEY_UNREADABLE (no suite reads it) or KEY_ALGORITHM_MISMATCH (a key of a type
            no suite holds, such as RSA or P-384).
    """
    unreadable: list[str] = []
    read: object = None
    for candidate in available_suites():
        try:
            key = candidate.read_private(pem)
        except ValueError as exc:
            unreadable.append(str(exc))
            continue
        if candidate.is_private_key(key):
            return SigningKey(key_id, candidate, key)
        read = key
    if read is None:
        missing = [problem for s in SUITES.values() if (problem := s.unavailable()) is not None]
        hint = f" (if it is an SM2 key: {missing[0]})" if missing else ""
        raise UnusableKey(f"signing key {key_id} is not a readable unencrypted PKCS8 PEM key: {unreadable[0]}{hint}",
                          reason="KEY_UNREADABLE")
    return signing_key(key_id, read)  # raises: no suite holds it

"""Development PKI: a CA, TLS certificates, signing keys and a matching agency registry.

DEV ONLY. Everything written here is for loopback testing and demos; production loads its
certificates, keys and registry from configured paths and never from this generator.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mitransfer.protocol import suites

GATEWAY_URI = "urn:mitransfer:gateway"
GATEWAY_KEY_ID = "gateway-dev-1"
DEV_LOG_ORIGIN = "dev.transfer-gateway.example/log"  # the dev registry's transparency log name
PERSON_KEY_ID = "person-dev-1"  # the dev person-key secret's id (automatic transfer's index)
_VALIDITY = dt.timedelta(days=3650)


@dataclass(frozen=True)
class DevPlatform:
    id: str
    name: str
    province: str
    agencies: tuple[tuple[str, str], ...]

    @property
    def certificate_uri(self) -> str:
        return f"urn:mitransfer:platform:{self.id}"

    @property
    def key_id(self) -> str:
        return f"{self.id}-dev-1"

    @property
    def agency_codes(self) -> tuple[str, ...]:
        return tuple(code for code, _ in self.agencies)


DEV_PLATFORMS: tuple[DevPlatform, ...] = (
    DevPlatform("jiangsu", "江苏省医疗保障信息平台", "32",
                (("320100", "南京市医疗保障局"), ("320500", "苏州市医疗保障局"), ("329900", "江苏省本级"))),
    DevPlatform("zhejiang", "浙江省医疗保障信息平台", "33",
                (("330100", "杭州市医疗保障局"), ("330200", "宁波市医疗保障局"), ("339900", "浙江省本级"))),
    DevPlatform("anhui", "安徽省医疗保障信息平台", "34",
                (("340100", "合肥市医疗保障局"), ("349900", "安徽省本级"))),
)


# (id, name, roles, provinces it may decide for: () is every province)
DEV_OPERATORS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("reviewer", "浙江省医保转移复核员（开发）", ("reviewer",), ("33",)),
    ("operator", "国家医保信息平台运维（开发）", ("operator",), ()),
)

# Region policies of the dev registry. Zhejiang's review of outbound balances above 10,000 yuan is
# its published practice for older in-province cases; the waiting periods are illustrative values
# of two regions, not their real policies.
DEV_REVIEW_ABOVE_FEN = 1_000_000
DEV_POLICIES: tuple[dict[str, object], ...] = (
    {"region": "33", "review_above_fen": DEV_REVIEW_ABOVE_FEN},
    {"region": "32", "waiting_period_months": 6},
    {"region": "330100", "waiting_period_months": 3, "review_above_fen": DEV_REVIEW_ABOVE_FEN},
)


@dataclass(frozen=True)
class DevPaths:
    """Where the files of a dev PKI directory are."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def gateway_cert(self) -> Path:
        return self.root / "gateway.pem"

    @property
    def gateway_key(self) -> Path:
        return self.root / "gateway.key"

    @property
    def gateway_signing_key(self) -> Path:
        return self.root / "gateway-signing.key"

    @property
    def registry(self) -> Path:
        return self.root / "registry.json"

    @property
    def person_key_secret(self) -> Path:
        """The secret of the suspended-record index's person keys (hex, as `openssl rand -hex 32`)."""
        return self.root / "person-key-dev.hex"

    def platform_cert(self, platform: str) -> Path:
        return self.root / "platforms" / f"{platform}.pem"

    def platform_key(self, platform: str) -> Path:
        return self.root / "platforms" / f"{platform}.key"

    def platform_signing_key(self, platform: str) -> Path:
        return self.root / "platforms" / f"{platform}-signing.key"

    def operator_cert(self, operator: str) -> Path:
        return self.root / "operators" / f"{operator}.pem"

    def operator_key(self, operator: str) -> Path:
        return self.root / "operators" / f"{operator}.key"


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "transfer-gateway DEV ONLY"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    now: dt.datetime,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


class PkiExists(FileExistsError):
    """The folder already holds a PKI; `existing` lists its files (relative to the folder)."""

    def __init__(self, root: Path, existing: list[str]) -> None:
        super().__init__(f"{root} already holds a PKI ({', '.join(existing[:3])}{', …' if len(existing) > 3 else ''})")
        self.root = root
        self.existing = existing


def _existing(root: Path, platforms: tuple[DevPlatform, ...]) -> list[str]:
    paths = DevPaths(root)
    candidates = [paths.ca, paths.gateway_cert, paths.gateway_key, paths.gateway_signing_key, paths.registry,
                  paths.person_key_secret]
    for platform in platforms:
        candidates += [paths.platform_cert(platform.id), paths.platform_key(platform.id),
                       paths.platform_signing_key(platform.id)]
    for operator_id, *_ in DEV_OPERATORS:
        candidates += [paths.operator_cert(operator_id), paths.operator_key(operator_id)]
    return [str(p.relative_to(root)) for p in candidates if p.exists()]


def _write_private(path: Path, pem: bytes) -> None:
    """A file readable by its owner only (0600 from the start: never briefly 0644). Every file of
    the dev PKI is written so: the keys must be, and the rest does not need more."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # an existing file keeps its mode through O_CREAT
        out.write(pem)


def _signing_key(algorithm: str) -> tuple[bytes, str]:
    """A new message-signing key of `algorithm`: (PKCS8 PEM, SPKI PEM)."""
    key = suites.signing_key("dev", suites.suite(algorithm).generate())
    return key.private_pem(), key.verifying_key().public_pem().decode()


def write_dev_pki(
    root: Path, platforms: tuple[DevPlatform, ...] = DEV_PLATFORMS, *, force: bool = False,
    signing_algorithm: str = "ed25519",
) -> DevPaths:
    """Write a fresh dev CA, gateway and platform certificates, signing keys and registry.json;
    private keys readable by their owner only. Returns the paths.

    Message and receipt signing keys are of `signing_algorithm` (a suite's name: "ed25519",
    "ecdsa-p256-sha256" or "sm2-sm3").

    Raises PkiExists if `root` already holds any of these files and `force` is not set (a new
    set replaces every key: each platform would need its new files and the new registry), and
    mitransfer.protocol.errors.UnusableKey for an unknown algorithm or SM2 without its extra.
    """
    suites.suite(signing_algorithm)  # refuse before writing anything
    existing = _existing(root, platforms)
    if existing and not force:
        raise PkiExists(root, existing)
    paths = DevPaths(root)
    (root / "platforms").mkdir(mode=0o700, parents=True, exist_ok=True)
    (root / "operators").mkdir(mode=0o700, parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("transfer-gateway DEV ONLY CA"))
        .issuer_name(_name("transfer-gateway DEV ONLY CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(paths.ca, ca_cert.public_bytes(serialization.Encoding.PEM))

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(
        "localhost", server_key, ca_cert, ca_key,
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
            x509.UniformResourceIdentifier(GATEWAY_URI),
        ],
        ExtendedKeyUsageOID.SERVER_AUTH, now,
    )
    _write_private(paths.gateway_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths.gateway_key, _pem_private(server_key))
    gateway_signing_private, gateway_signing_public = _signing_key(signing_algorithm)
    _write_private(paths.gateway_signing_key, gateway_signing_private)
    _write_private(paths.person_key_secret, secrets.token_hex(32).encode() + b"\n")

    registry_platforms = []
    registry_agencies = []
    for platform in platforms:
        tls_key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(
            f"{platform.id} platform", tls_key, ca_cert, ca_key,
            [x509.UniformResourceIdentifier(platform.certificate_uri)],
            ExtendedKeyUsageOID.CLIENT_AUTH, now,
        )
        _write_private(paths.platform_cert(platform.id), cert.public_bytes(serialization.Encoding.PEM))
        _write_private(paths.platform_key(platform.id), _pem_private(tls_key))
        signing_private, signing_public = _signing_key(signing_algorithm)
        _write_private(paths.platform_signing_key(platform.id), signing_private)
        registry_platforms.append({
            "id": platform.id,
            "name": platform.name,
            "certificate_uri": platform.certificate_uri,
            "provinces": [platform.province],
            "keys": [{"key_id": platform.key_id, "algorithm": signing_algorithm, "public_key": signing_public}],
        })
        registry_agencies += [{"code": code, "name": name, "platform": platform.id}
                              for code, name in platform.agencies]

    registry_operators = []
    for operator_id, name, roles, provinces in DEV_OPERATORS:
        uri = f"urn:mitransfer:operator:{operator_id}"
        tls_key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(f"{operator_id} operator", tls_key, ca_cert, ca_key,
                      [x509.UniformResourceIdentifier(uri)], ExtendedKeyUsageOID.CLIENT_AUTH, now)
        _write_private(paths.operator_cert(operator_id), cert.public_bytes(serialization.Encoding.PEM))
        _write_private(paths.operator_key(operator_id), _pem_private(tls_key))
        registry_operators.append({"id": operator_id, "name": name, "certificate_uri": uri, "roles": list(roles),
                                   **({"provinces": list(provinces)} if provinces else {})})

    registry = {
        "dev_only": True,
        "comment": "DEV ONLY: generated by `transfer-gateway certs dev`; never use in production.",
        "gateway": {"keys": [{"key_id": GATEWAY_KEY_ID, "algorithm": signing_algorithm,
                              "public_key": gateway_signing_public}],
                    "log_origin": DEV_LOG_ORIGIN},
        "platforms": registry_platforms,
        "agencies": registry_agencies,
        "operators": registry_operators,
        "policies": list(DEV_POLICIES),
    }
    _write_private(paths.registry, (json.dumps(registry, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
    return paths

"""The identity step: the client's full chain verified against the configured CA, certificates
pinned by the registry, revoked serials refused; each at the first call, and following reloads.

The bad chain is the one `openssl verify` refuses: a root with pathLenConstraint 0 (as the dev CA)
and, under it, an extra CA certificate that issued a certificate naming a platform. BoringSSL, as
gRPC runs it, does not enforce the root's own constraint; the gateway's identity step does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.app.assembly import assemble
from gateway.app.devpki import DevPaths
from gateway.app.server import GatewayServer
from mitransfer.v1 import admin_pb2, tracking_pb2, tracking_pb2_grpc
from tests.conftest import test_config as gateway_config
from tests.support import GatewayHandle, failure

NOW = dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


def _key_pem(k: ec.EllipticCurvePrivateKey) -> bytes:
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey, *,
          ca: bool = False, san: list[x509.GeneralName] | None = None,
          usage: x509.ObjectIdentifier | None = None) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(NOW - dt.timedelta(hours=1))
               .not_valid_after(NOW + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                        critical=True)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class Peer:
    chain: bytes
    key: bytes


@dataclass
class Pki:
    paths: DevPaths
    root: x509.Certificate
    good: Peer    # jiangsu's certificate, issued by the root
    forged: Peer  # "jiangsu" issued by an extra CA under the root that forbids intermediates
    forged_parts: tuple[x509.Certificate, x509.Certificate]  # (leaf, extra CA)


@pytest.fixture
def own_pki(pki: DevPaths, tmp_path: Path) -> Pki:
    """The dev PKI with its CA replaced by one whose key the test holds (pathLenConstraint 0)."""
    shutil.copytree(pki.root, tmp_path / "pki")
    paths = DevPaths(tmp_path / "pki")
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = issue("test root", root_key, _name("test root"), root_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = issue("localhost", server_key, root.subject, root_key, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                   san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    paths.ca.write_bytes(_pem(root))
    paths.gateway_cert.write_bytes(_pem(server))
    paths.gateway_key.write_bytes(_key_pem(server_key))
    jiangsu = [x509.UniformResourceIdentifier("urn:mitransfer:platform:jiangsu")]
    good_key = ec.generate_private_key(ec.SECP256R1())
    good = issue("jiangsu", good_key, root.subject, root_key, san=jiangsu, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    extra_key = ec.generate_private_key(ec.SECP256R1())
    extra = issue("extra CA", extra_key, root.subject, root_key, ca=True)
    forged_key = ec.generate_private_key(ec.SECP256R1())
    forged = issue("forged", forged_key, extra.subject, extra_key, san=jiangsu, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(paths, root, Peer(_pem(good), _key_pem(good_key)),
               Peer(_pem(forged) + _pem(extra), _key_pem(forged_key)), (forged, extra))


@pytest.fixture
async def server(own_pki: Pki, tmp_path: Path) -> AsyncIterator[GatewayServer]:
    gateway = assemble(gateway_config(own_pki.paths, tmp_path / "gateway.db"))
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop(grace=0.1)


async def list_cases(server: GatewayServer, root: x509.Certificate, peer: Peer) -> tuple[grpc.StatusCode, str]:
    creds = grpc.ssl_channel_credentials(root_certificates=_pem(root), private_key=peer.key,
                                         certificate_chain=peer.chain)
    async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", creds) as channel:
        try:
            await tracking_pb2_grpc.TrackingStub(channel).ListCases(tracking_pb2.ListCasesRequest(), timeout=10)
        except grpc.aio.AioRpcError as err:
            return err.code(), failure(err).reason
    return grpc.StatusCode.OK, ""


async def test_a_chain_through_an_extra_ca_under_a_root_that_forbids_it_is_refused(
    own_pki: Pki, server: GatewayServer, tmp_path: Path,
) -> None:
    assert await list_cases(server, own_pki.root, own_pki.good) == (grpc.StatusCode.OK, "")
    assert await list_cases(server, own_pki.root, own_pki.forged) == (
        grpc.StatusCode.UNAUTHENTICATED, "CERTIFICATE_CHAIN_INVALID")
    # The same verdict as `openssl verify`, which the gateway's TLS alone did not reach.
    leaf, extra = own_pki.forged_parts
    for name, certificate in (("root.pem", own_pki.root), ("extra.pem", extra), ("leaf.pem", leaf)):
        (tmp_path / name).write_bytes(_pem(certificate))
    run = subprocess.run(["openssl", "verify", "-CAfile", "root.pem", "-untrusted", "extra.pem", "leaf.pem"],
                         cwd=tmp_path, capture_output=True, text=True, check=False)
    assert run.returncode != 0 and "path length" in run.stdout + run.stderr


def registry_with(pki: DevPaths, version: int, **jiangsu: object) -> bytes:
    data = json.loads(pki.registry.read_text(encoding="utf-8"))
    data["version"] = version
    revoked = jiangsu.pop("revoked", None)
    if revoked is not None:
        data["revoked_certificates"] = [{"serial": revoked, "revoked_at": "2026-12-01T00:00:00Z"}]
    next(p for p in data["platforms"] if p["id"] == "jiangsu").update(jiangsu)
    return json.dumps(data, ensure_ascii=False).encode()


def pin_of(certificate_pem: bytes) -> str:
    spki = x509.load_pem_x509_certificate(certificate_pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


@pytest.fixture
async def dev_gateway(pki: DevPaths, tmp_path: Path) -> AsyncIterator[GatewayHandle]:
    shutil.copytree(pki.root, tmp_path / "pki")
    paths = DevPaths(tmp_path / "pki")
    paths.registry.write_bytes(registry_with(paths, 1))
    server = assemble(gateway_config(paths, tmp_path / "gateway.db"))
    await server.start()
    handle = GatewayHandle(server=server, pki=paths, database=tmp_path / "gateway.db")
    try:
        yield handle
    finally:
        await handle.close_channels()
        await server.stop(grace=0.1)


async def jiangsu_lists(handle: GatewayHandle) -> tuple[grpc.StatusCode, str]:
    try:
        await handle.tracking("jiangsu").ListCases(tracking_pb2.ListCasesRequest())
    except grpc.aio.AioRpcError as err:
        return err.code(), failure(err).reason
    return grpc.StatusCode.OK, ""


async def reload(handle: GatewayHandle, document: bytes) -> None:
    await handle.admin("operator").ReloadRegistry(admin_pb2.ReloadRegistryRequest(document=document))


async def test_pins_and_revocations_follow_the_registry_at_the_next_call(dev_gateway: GatewayHandle) -> None:
    paths = dev_gateway.pki
    certificate = paths.platform_cert("jiangsu").read_bytes()
    other = pin_of(paths.platform_cert("zhejiang").read_bytes())
    assert await jiangsu_lists(dev_gateway) == (grpc.StatusCode.OK, "")  # verified and cached now

    await reload(dev_gateway, registry_with(paths, 2, certificate_pins=[other]))
    assert await jiangsu_lists(dev_gateway) == (grpc.StatusCode.PERMISSION_DENIED, "CERTIFICATE_NOT_PINNED")

    await reload(dev_gateway, registry_with(paths, 3, certificate_pins=[other, pin_of(certificate)]))
    assert await jiangsu_lists(dev_gateway) == (grpc.StatusCode.OK, "")  # several pins: a rotation's overlap

    serial = f"{x509.load_pem_x509_certificate(certificate).serial_number:x}"
    await reload(dev_gateway, registry_with(paths, 4, revoked=serial))
    assert await jiangsu_lists(dev_gateway) == (grpc.StatusCode.UNAUTHENTICATED, "CERTIFICATE_REVOKED")
    # Another platform's certificate is untouched by both.
    await dev_gateway.tracking("zhejiang").ListCases(tracking_pb2.ListCasesRequest())


async def test_the_certificates_seen_have_expiry_gauges(dev_gateway: GatewayHandle) -> None:
    await dev_gateway.tracking("zhejiang").ListCases(tracking_pb2.ListCasesRequest())
    await dev_gateway.server.monitor.refresh_once()
    serial = f"{x509.load_pem_x509_certificate(dev_gateway.pki.platform_cert('zhejiang').read_bytes()).serial_number:x}"
    value = dev_gateway.server.prometheus.get_sample_value(
        "transfer_gateway_certificate_expiry_seconds", {"role": "client", "owner": "zhejiang", "serial": serial})
    assert value is not None and 9 * 365 * 86400 < value < 3651 * 86400
    server_serial = f"{x509.load_pem_x509_certificate(dev_gateway.pki.gateway_cert.read_bytes()).serial_number:x}"
    assert dev_gateway.server.prometheus.get_sample_value(
        "transfer_gateway_certificate_expiry_seconds", {"role": "server", "owner": "gateway", "serial": server_serial})

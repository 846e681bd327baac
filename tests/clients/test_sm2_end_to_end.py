"""SM2 with SM3 end to end: platforms and the gateway all sign with SM2 keys (a dev PKI made with
`--algorithm sm2-sm3`), the reference clients play whole cases through a real gateway over mTLS,
on SQLite and on PostgreSQL; every receipt and stored message carries an SM2 signature that an
independent implementation (gmssl) verifies too."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from gmssl import sm2 as gmssl_sm2

from clients.platform import PlatformClient, PlatformConfig
from clients.reviewer import OperatorConfig, ReviewerClient
from clients.scenario import CasePlan, outbound_messages, run_cases
from gateway.app.assembly import assemble
from gateway.app.devpki import DevPaths, write_dev_pki
from gateway.app.server import GatewayServer
from gateway.store.engines import StoreConfig
from gateway.store.postgres import PostgresConfig
from gateway.store.sqlite import SQLiteConfig
from mitransfer.protocol.dsse import pae
from mitransfer.protocol.kinds import RECEIPT_PAYLOAD_TYPE, payload_type
from tests.conftest import test_config as gateway_config
from tests.support import drop_schema, postgres_url

JIANGSU, ZHEJIANG = ("320100", "320500", "329900"), ("330100", "330200", "339900")


@pytest.fixture(scope="module")
def sm2_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPaths:
    return write_dev_pki(tmp_path_factory.mktemp("sm2-pki"), signing_algorithm="sm2-sm3")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreConfig]:
    if request.param == "sqlite":
        yield SQLiteConfig(path=tmp_path / "gateway.db")
        return
    url, schema = postgres_url(), f"sm2_{uuid.uuid4().hex[:12]}"
    try:
        yield PostgresConfig(url=url, schema=schema)
    finally:
        drop_schema(url, schema)


@pytest.fixture
async def server(sm2_pki: DevPaths, store: StoreConfig, tmp_path: Path) -> AsyncIterator[GatewayServer]:
    gateway = assemble(replace(gateway_config(sm2_pki, tmp_path / "unused.db"), store=store))
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop(grace=0.1)


def gmssl_verifies(public_key: object, signature: bytes, data: bytes) -> bool:
    numbers = public_key.public_numbers()  # type: ignore[attr-defined]
    r, s = decode_dss_signature(signature)
    other = gmssl_sm2.CryptSM2(private_key="", public_key=f"{numbers.x:064x}{numbers.y:064x}")
    return bool(other.verify_with_sm3(f"{r:064x}{s:064x}", data))


async def test_sm2_cases_complete_on_both_stores(sm2_pki: DevPaths, server: GatewayServer) -> None:
    address = f"127.0.0.1:{server.port}"
    async with AsyncExitStack() as stack:
        js, zj = [await stack.enter_async_context(PlatformClient.connect(PlatformConfig.dev(p, address, sm2_pki.root)))
                  for p in ("jiangsu", "zhejiang")]
        reviewer = await stack.enter_async_context(
            ReviewerClient.connect(OperatorConfig.dev("reviewer", address, sm2_pki.root)))
        result = await run_cases(js, zj, transfers=4, a_agencies=JIANGSU, b_agencies=ZHEJIANG, reviewer=reviewer,
                                 timeout=60, seed=7)
        assert (result.completed, result.failed) == (4, 0), result.errors

        # One more message, checked byte by byte: the platform's SM2 signature as submitted and
        # the gateway's SM2 receipt, each verified by gmssl as well as by the suite.
        signed = js.sign(outbound_messages(CasePlan.synthetic(JIANGSU[0], ZHEJIANG[0], seed=99))[0])
        accepted = await js.submit_signed(signed)
        receipt = accepted.receipt
        gateway_key = js.keyring.gateway_keys[receipt.key_id]
        assert gateway_key.algorithm == "sm2-sm3"
        assert gmssl_verifies(gateway_key.key.key, receipt.signature, pae(RECEIPT_PAYLOAD_TYPE, receipt.body))
        platform_key = js.keyring.platform_keys[signed.key_id]
        assert platform_key.algorithm == "sm2-sm3"
        assert gmssl_verifies(platform_key.key.key, signed.signature, pae(payload_type(signed.kind), signed.payload))

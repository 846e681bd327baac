"""Test-side helpers: raw signed submissions over real mTLS channels, without the reference client,
so the gateway is tested on its own contract (and with deliberately broken inputs)."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from psycopg import sql as pgsql

from gateway.app.devpki import DevPaths
from gateway.app.server import GatewayServer
from gateway.core import messages
from gateway.core.signing import LocalSigner, pae
from mitransfer.v1 import admin_pb2_grpc, envelope_pb2, exchange_pb2_grpc, tracking_pb2_grpc

KEY_IDS = {"jiangsu": "jiangsu-dev-1", "zhejiang": "zhejiang-dev-1", "anhui": "anhui-dev-1"}


def secure_channel(pki: DevPaths, platform: str | None, port: int) -> grpc.aio.Channel:
    """An mTLS channel as `platform` (None: TLS without a client certificate)."""
    if platform is None:
        creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    else:
        creds = grpc.ssl_channel_credentials(
            root_certificates=pki.ca.read_bytes(),
            private_key=pki.platform_key(platform).read_bytes(),
            certificate_chain=pki.platform_cert(platform).read_bytes(),
        )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds)


def operator_channel(pki: DevPaths, operator: str, port: int) -> grpc.aio.Channel:
    """An mTLS channel with an operator's certificate (reviewer, operator)."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(), private_key=pki.operator_key(operator).read_bytes(),
        certificate_chain=pki.operator_cert(operator).read_bytes(),
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds)


def signer(pki: DevPaths, platform: str) -> LocalSigner:
    return LocalSigner.from_pem(KEY_IDS[platform], pki.platform_signing_key(platform).read_bytes())


def sign(message: messages.BusinessMessage, key: LocalSigner) -> envelope_pb2.SignedMessage:
    kind = messages.kind_of(message)
    payload = message.SerializeToString()
    return envelope_pb2.SignedMessage(
        kind=kind, payload=payload, key_id=key.key_id, signature=key.sign(pae(messages.payload_type(kind), payload))
    )


@dataclass
class RpcFailure:
    code: grpc.StatusCode
    message: str
    reason: str
    fields: list[str]
    metadata: dict[str, str] = field(default_factory=dict)


def failure(err: grpc.aio.AioRpcError) -> RpcFailure:
    """The status and google.rpc details of a failed call."""
    status = rpc_status.from_call(err)
    reason, fields, metadata = "", [], {}
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields = [v.field for v in bad.field_violations]
    return RpcFailure(err.code(), err.details() or "", reason, fields, metadata)


@dataclass
class GatewayHandle:
    server: GatewayServer
    pki: DevPaths
    database: Path
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    def channel(self, platform: str | None) -> grpc.aio.Channel:
        ch = secure_channel(self.pki, platform, self.server.port)
        self._channels.append(ch)
        return ch

    def exchange(self, platform: str | None) -> exchange_pb2_grpc.ExchangeStub:
        return exchange_pb2_grpc.ExchangeStub(self.channel(platform))

    def operator_channel(self, operator: str) -> grpc.aio.Channel:
        ch = operator_channel(self.pki, operator, self.server.port)
        self._channels.append(ch)
        return ch

    def admin(self, operator: str) -> admin_pb2_grpc.AdminStub:
        return admin_pb2_grpc.AdminStub(self.operator_channel(operator))

    def tracking(self, platform: str) -> tracking_pb2_grpc.TrackingStub:
        return tracking_pb2_grpc.TrackingStub(self.channel(platform))

    def signer(self, platform: str) -> LocalSigner:
        return signer(self.pki, platform)

    async def submit(self, platform: str, message: messages.BusinessMessage) -> envelope_pb2.Receipt:
        return await self.exchange(platform).Submit(sign(message, self.signer(platform)))

    def count(self, table: str, where: str = "1=1", *params: object) -> int:
        """Rows in the gateway's database (read through a separate connection, as an auditor would)."""
        with sqlite3.connect(self.database) as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", params).fetchone()[0])

    async def close_channels(self) -> None:
        for ch in self._channels:
            await ch.close()
        self._channels.clear()



PG_URL = os.environ.get("TRANSFER_GATEWAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_url() -> str:
    """The test PostgreSQL server's URL; outside CI a missing server skips, loudly, in CI it fails."""
    try:
        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as err:
        message = f"PostgreSQL is not reachable at {PG_URL}: {err}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip("SKIPPED, NOT TESTED: " + message)
    return PG_URL


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(pgsql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(pgsql.Identifier(schema)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> int:
    """A port p such that p, p + 1, …, p + count - 1 are free (`serve --workers`: worker i serves
    /metrics on p + i)."""
    while True:
        port = free_port()
        try:
            for offset in range(1, count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port


def start_gateway_process(pki: DevPaths, config: Path, port: int, log: Path, store: str,
                          extra: str = "", args: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """`transfer-gateway serve --config` as an operator runs it: `store` is the [store] table's
    body, `args` more options of `serve`; deliveries are redelivered after 1 s."""
    config.write_text(f"""
listen = "127.0.0.1:{port}"
metrics_listen = ""
registry = "{pki.registry}"
shutdown_grace_seconds = 5
{extra}

[tls]
ca = "{pki.ca}"
cert = "{pki.gateway_cert}"
key = "{pki.gateway_key}"

[signing]
key = "{pki.gateway_signing_key}"
key_id = "gateway-dev-1"

[store]
{store}

[delivery]
visibility_timeout_seconds = 1
max_attempts = 50

[automatic]
current_person_key = "person-dev-1"

[automatic.person_key_secrets]
"person-dev-1" = "{pki.person_key_secret}"
""")
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), *args],
        stdout=subprocess.DEVNULL, stderr=log.open("ab"), cwd=Path(__file__).parent.parent,
    )


async def wait_serving(pki: DevPaths, port: int, timeout: float = 20.0,
                       want: int = health_pb2.HealthCheckResponse.SERVING) -> None:
    """Until the gateway's overall health is `want` (SERVING by default)."""
    async with secure_channel(pki, "jiangsu", port) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == want:
                    return
            except grpc.aio.AioRpcError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"gateway health did not become {want}")
            await asyncio.sleep(0.1)

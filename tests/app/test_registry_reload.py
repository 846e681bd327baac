"""The registry's lifecycle: reloaded without a restart by Admin.ReloadRegistry and by SIGHUP,
shared through the store, never going back; replicas converge on one version.

In process: two replicas on one PostgreSQL schema; one loads version 2 through the Admin RPC and
the other serves it within a monitor interval. As processes: SIGHUP reloads the file of one
replica (the process stays up and serving), and the other, whose own file is still version 1,
converges through the store.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients.scenario import CasePlan, outbound_messages
from gateway.app.assembly import assemble
from gateway.app.devpki import DevPaths
from gateway.app.server import GatewayServer
from gateway.store.postgres import PostgresConfig
from mitransfer.v1 import admin_pb2, admin_pb2_grpc, exchange_pb2_grpc
from tests.conftest import test_config as gateway_config
from tests.support import (
    GatewayHandle,
    drop_schema,
    failure,
    free_port,
    operator_channel,
    postgres_url,
    secure_channel,
    sign,
    signer,
    start_gateway_process,
    wait_serving,
)


def registry_with(pki: DevPaths, version: int, *, agency: str | None = None) -> bytes:
    """The dev registry as version `version`, with one more Jiangsu agency if `agency` is given."""
    data = json.loads(pki.registry.read_text(encoding="utf-8"))
    data["version"] = version
    data["issued_at"] = "2026-12-01T09:00:00+08:00"
    if agency is not None:
        data["agencies"].append({"code": agency, "name": "无锡市医疗保障局", "platform": "jiangsu"})
    return json.dumps(data, ensure_ascii=False, indent=1).encode()


def copy_pki(pki: DevPaths, root: Path) -> DevPaths:
    shutil.copytree(pki.root, root)
    return DevPaths(root)


@pytest.fixture
def schema() -> Iterator[tuple[str, str]]:
    url, name = postgres_url(), f"reload_{uuid.uuid4().hex[:12]}"
    try:
        yield url, name
    finally:
        drop_schema(url, name)


@pytest.fixture
async def replicas(pki: DevPaths, tmp_path: Path, schema: tuple[str, str]) -> AsyncIterator[list[GatewayHandle]]:
    url, name = schema
    handles = []
    async with AsyncExitStack() as stack:
        for i in range(2):
            own = copy_pki(pki, tmp_path / f"pki-{i}")
            own.registry.write_bytes(registry_with(pki, 1))
            server = assemble(replace(gateway_config(own, tmp_path / "unused.db"),
                                      store=PostgresConfig(url=url, schema=name)))
            await server.start()
            stack.push_async_callback(server.stop, 0.1)
            handle = GatewayHandle(server=server, pki=own, database=tmp_path / "unused.db")
            stack.push_async_callback(handle.close_channels)
            handles.append(handle)
        yield handles


def version(server: GatewayServer) -> float | None:
    return server.prometheus.get_sample_value("transfer_gateway_registry_version")


async def reload(handle: GatewayHandle, document: bytes = b"", operator: str = "operator") -> Any:
    return await handle.admin(operator).ReloadRegistry(admin_pb2.ReloadRegistryRequest(document=document))


async def refused(call: Any) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    f = failure(caught.value)
    return f.code, f.reason, f.message


async def test_a_version_loaded_on_one_replica_is_served_by_both(pki: DevPaths, replicas: list[GatewayHandle]) -> None:
    a, b = replicas
    assert version(a.server) == version(b.server) == 1
    # Before: the new agency is unknown, on either replica.
    request = outbound_messages(CasePlan.synthetic("320200", "330100", seed=31))[0]
    signed = sign(request, signer(pki, "jiangsu"))  # type: ignore[arg-type]
    code, reason, _ = await refused(b.exchange("jiangsu").Submit(signed))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "AGENCY_NOT_OF_PLATFORM")

    v2 = registry_with(pki, 2, agency="320200")
    answer = await reload(a, v2)
    assert (answer.version, answer.changed) == (2, True)
    assert answer.issued_at.ToDatetime(dt.UTC) == dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)
    assert (await reload(a, v2)).changed is False  # the same document again: nothing to do

    deadline = asyncio.get_running_loop().time() + 5
    while version(b.server) != 2:  # b's monitor (every 0.2 s) reads the store's version
        assert asyncio.get_running_loop().time() < deadline, "replica b did not converge"
        await asyncio.sleep(0.05)
    receipt = await b.exchange("jiangsu").Submit(signed)
    assert receipt.key_id == "gateway-dev-1"
    reloads = b.server.prometheus.get_sample_value("transfer_gateway_registry_reloads_total", {"result": "loaded"})
    assert reloads == 1


async def test_a_reload_never_goes_back_nor_reuses_a_version(pki: DevPaths, replicas: list[GatewayHandle]) -> None:
    a, _ = replicas
    await reload(a, registry_with(pki, 3))
    code, reason, message = await refused(reload(a, registry_with(pki, 2)))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "REGISTRY_OLDER") and "version 3" in message
    code, reason, message = await refused(reload(a, registry_with(pki, 3, agency="320200")))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "REGISTRY_VERSION_REUSED")
    assert "version 4" in message  # says what to do
    code, reason, _ = await refused(reload(a, b"{not json"))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REGISTRY_INVALID")
    code, reason, _ = await refused(reload(a))  # its own file is still version 1
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "REGISTRY_OLDER")
    assert version(a.server) == 3
    refusals = a.server.prometheus.get_sample_value("transfer_gateway_registry_reloads_total", {"result": "refused"})
    assert refusals == 4


async def test_a_version_that_drops_the_gateways_key_is_refused(pki: DevPaths, replicas: list[GatewayHandle]) -> None:
    a, _ = replicas
    data = json.loads(registry_with(pki, 5))
    data["gateway"]["keys"] = []
    code, reason, message = await refused(reload(a, json.dumps(data).encode()))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REGISTRY_INVALID") and "gateway-dev-1" in message


async def test_only_an_operator_reloads(pki: DevPaths, replicas: list[GatewayHandle]) -> None:
    a, _ = replicas
    code, reason, _ = await refused(reload(a, registry_with(pki, 2), operator="reviewer"))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_MISSING")
    stub = admin_pb2_grpc.AdminStub(a.channel("jiangsu"))
    code, reason, _ = await refused(stub.ReloadRegistry(admin_pb2.ReloadRegistryRequest()))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "OPERATOR_UNKNOWN")
    assert version(a.server) == 1


@pytest.mark.slow
async def test_sighup_reloads_the_file_and_the_other_replica_converges(
    pki: DevPaths, tmp_path: Path, schema: tuple[str, str], processes: list[Any],
) -> None:
    url, name = schema
    ports = [free_port(), free_port()]
    own = [copy_pki(pki, tmp_path / f"pki-{i}") for i in range(2)]
    for i, paths in enumerate(own):
        paths.registry.write_bytes(registry_with(pki, 1))
        processes.append(start_gateway_process(
            paths, tmp_path / f"replica-{i}.toml", ports[i], tmp_path / f"replica-{i}.log",
            f'postgresql = "{url}"\nschema = "{name}"', extra="monitor_interval_seconds = 0.2"))
    for port in ports:
        await wait_serving(pki, port)

    own[0].registry.write_bytes(registry_with(pki, 2, agency="320200"))
    processes[0].send_signal(signal.SIGHUP)

    async def version_seen_by(i: int) -> tuple[grpc.StatusCode | None, str]:
        """Asking a replica to re-read its own file tells which version it holds in force."""
        async with operator_channel(own[i], "operator", ports[i]) as channel:
            try:
                answer = await admin_pb2_grpc.AdminStub(channel).ReloadRegistry(admin_pb2.ReloadRegistryRequest())
            except grpc.aio.AioRpcError as err:
                return err.code(), failure(err).message
            return None, f"version {answer.version} changed={answer.changed}"

    deadline = asyncio.get_running_loop().time() + 10
    while True:
        seen = [await version_seen_by(0), await version_seen_by(1)]
        if seen[0] == (None, "version 2 changed=False") and seen[1][0] == grpc.StatusCode.FAILED_PRECONDITION:
            break  # replica 0 reloaded its file on SIGHUP; replica 1 holds 2 (its file's 1 is older)
        assert asyncio.get_running_loop().time() < deadline, seen
        await asyncio.sleep(0.2)
    assert "older than version 2" in seen[1][1]
    assert all(p.poll() is None for p in processes)  # SIGHUP no longer ends the process
    request = outbound_messages(CasePlan.synthetic("320200", "330100", seed=32))[0]
    async with secure_channel(pki, "jiangsu", ports[1]) as channel:
        signed = sign(request, signer(pki, "jiangsu"))  # type: ignore[arg-type]
        receipt = await exchange_pb2_grpc.ExchangeStub(channel).Submit(signed)
    assert receipt.key_id == "gateway-dev-1"

"""Connections held open and never used: gRPC's own limits, as the configuration sets them, close
them; counted by the sockets themselves, each loop bounded in count."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from gateway.app.assembly import assemble
from gateway.app.config import ConnectionsConfig
from gateway.app.devpki import DevPaths
from tests.conftest import test_config as base_config
from tests.support import GatewayHandle

LIMITS = ConnectionsConfig(max_connections=100, handshake_timeout=0.5, max_connection_idle=0.5)


@pytest.fixture
async def guarded(pki: DevPaths, tmp_path: Path) -> AsyncIterator[GatewayHandle]:
    server = assemble(replace(base_config(pki, tmp_path / "gateway.db"), connections=LIMITS))
    await server.start()
    handle = GatewayHandle(server=server, pki=pki, database=tmp_path / "gateway.db")
    try:
        yield handle
    finally:
        await handle.close_channels()
        await server.stop(grace=0.1)


def held(sockets: list[socket.socket]) -> int:
    """How many of `sockets` the server still holds open (a closed one reads end of file or fails)."""
    count = 0
    for s in sockets:
        try:
            count += s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            count += 1
        except OSError:
            pass
    return count


async def test_2000_idle_connections_are_not_all_held(guarded: GatewayHandle) -> None:
    """2,000 TCP connections that never say a word: at most `max_connections` are held, and each
    of those is closed when its handshake time runs out."""
    sockets = []
    try:
        for _ in range(2000):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):  # a non-blocking connect is under way
                s.connect(("127.0.0.1", guarded.server.port))
            sockets.append(s)
        most = 0
        for _ in range(300):  # watch until none is held (bounded)
            await asyncio.sleep(0.02)
            now = held(sockets)
            most = max(most, now)
            if now == 0:
                break
        assert 0 < most <= LIMITS.max_connections
        assert held(sockets) == 0
    finally:
        for s in sockets:
            s.close()
    # The gateway still serves: the slots came free.
    health = guarded.channel("jiangsu").unary_unary("/grpc.health.v1.Health/Check")
    assert await health(b"", timeout=10) is not None


async def test_an_established_connection_without_calls_is_closed(guarded: GatewayHandle) -> None:
    channel = guarded.channel("jiangsu")
    await channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=10)
    assert channel.get_state() == grpc.ChannelConnectivity.READY
    for _ in range(300):  # the server's GOAWAY puts the channel back to IDLE (bounded)
        if channel.get_state() != grpc.ChannelConnectivity.READY:
            break
        await asyncio.sleep(0.02)
    assert channel.get_state() == grpc.ChannelConnectivity.IDLE


def test_the_limits_reach_grpc_as_its_options() -> None:
    options = dict(ConnectionsConfig().grpc_options())
    assert options == {
        "grpc.max_allowed_incoming_connections": 1000, "grpc.server_handshake_timeout_ms": 10_000,
        "grpc.max_concurrent_streams": 100, "grpc.max_connection_idle_ms": 300_000,
        "grpc.max_connection_age_ms": 1_800_000, "grpc.max_connection_age_grace_ms": 30_000,
        "grpc.keepalive_time_ms": 60_000, "grpc.keepalive_timeout_ms": 20_000}

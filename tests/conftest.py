"""Shared fixtures: a fresh dev PKI per session and a real gateway over mTLS on loopback."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.app.assembly import assemble
from gateway.app.config import GatewayConfig
from gateway.app.devpki import DevPaths, write_dev_pki
from gateway.service.routing import DeliveryConfig
from tests.support import GatewayHandle


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPaths:
    return write_dev_pki(tmp_path_factory.mktemp("pki"))


def test_config(pki: DevPaths, database: Path, **overrides: object) -> GatewayConfig:
    config = GatewayConfig.dev(pki.root, database, listen="127.0.0.1:0", metrics_listen="127.0.0.1:0",
                               monitor_interval=0.2, shutdown_grace=1.0)
    fast = DeliveryConfig(visibility_timeout=0.5, max_attempts=3)
    return replace(config, delivery=fast, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def gateway(pki: DevPaths, tmp_path: Path) -> AsyncIterator[GatewayHandle]:
    server = assemble(test_config(pki, tmp_path / "gateway.db"))
    await server.start()
    handle = GatewayHandle(server=server, pki=pki, database=tmp_path / "gateway.db")
    try:
        yield handle
    finally:
        await handle.close_channels()
        await server.stop(grace=0.1)


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Gateway processes a test starts; killed and reaped afterwards whatever happened."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()

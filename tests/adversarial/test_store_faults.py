"""A store that cannot write: health says so, and start-up refuses it.

Before: a store that could not write (a full disk, a read-only file system) answered UNAVAILABLE
correctly, but health stayed SERVING with no log line, and the gateway started and reported
SERVING on a read-only file system.

Two real faults, on loopback:
- SQLite: the gateway runs as its own process and the test lowers that process's file-size limit
  (RLIMIT_FSIZE) to one byte: every write of the database file or its WAL then fails in the
  kernel (EFBIG, as a full disk fails with ENOSPC), reads still work. Its log goes to a pipe,
  which the limit does not touch.
- PostgreSQL: the gateway's role is made read-only (`default_transaction_read_only`) and its
  sessions are ended, as after a fail-over to a standby: the pool reconnects, reads work,
  writes are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql as pgsql

from clients.scenario import CasePlan, outbound_messages
from gateway.app.assembly import assemble
from gateway.app.devpki import DevPaths
from gateway.app.failures import ExitCode, Unavailable
from gateway.core.errors import StoreUnavailable
from gateway.store.postgres import PostgresConfig
from mitransfer.v1 import exchange_pb2_grpc
from tests.adversarial.conftest import DEADLINE
from tests.conftest import test_config as gateway_config
from tests.support import GatewayHandle, drop_schema, failure, free_port, postgres_url, secure_channel, sign, signer

INTERVAL = 0.5  # the monitor's interval in these tests
EXCHANGE = "mitransfer.v1.Exchange"
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def health_becomes(pki: DevPaths, port: int, want: int, within: float) -> None:
    """Exchange's health turns `want` within `within` seconds (watched; while the server is not
    listening yet, tried again every 0.1 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with secure_channel(pki, "zhejiang", port) as channel:
        while loop.time() < deadline:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=EXCHANGE),
                                                              timeout=deadline - loop.time())
            try:
                async for reply in watch:
                    if reply.status == want:
                        watch.cancel()
                        return
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    break
                await asyncio.sleep(0.1)
    raise AssertionError(f"health did not become {want} within {within} s")


def config_file(pki: DevPaths, folder: Path, port: int, store: str) -> Path:
    path = folder / "gateway.toml"
    path.write_text(f"""
listen = "127.0.0.1:{port}"
metrics_listen = ""
registry = "{pki.registry}"
monitor_interval_seconds = {INTERVAL}
shutdown_grace_seconds = 1

[tls]
ca = "{pki.ca}"
cert = "{pki.gateway_cert}"
key = "{pki.gateway_key}"

[signing]
key = "{pki.gateway_signing_key}"
key_id = "gateway-dev-1"

[store]
{store}

[automatic]
current_person_key = "person-dev-1"

[automatic.person_key_secrets]
"person-dev-1" = "{pki.person_key_secret}"
""")
    return path


@contextlib.contextmanager
def serving_process(config: Path, **popen: object) -> Iterator[subprocess.Popen[bytes]]:
    """`transfer-gateway serve` with its log on a pipe; stopped and reaped whatever happens."""
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=Path(__file__).parents[2], **popen)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def events(log: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.decode().splitlines() if line.startswith("{")]


async def read_all(stream: object) -> bytes:
    return await asyncio.to_thread(stream.read)  # type: ignore[attr-defined]


def one_byte_files() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))


@pytest.mark.slow
async def test_sqlite_that_cannot_write_turns_health_not_serving_and_back(pki: DevPaths, tmp_path: Path) -> None:
    port = free_port()
    config = config_file(pki, tmp_path, port, f'sqlite = "{tmp_path / "gateway.db"}"')
    with serving_process(config) as proc:
        assert proc.stderr is not None
        log = asyncio.ensure_future(read_all(proc.stderr))  # drained all along: the pipe never fills
        await health_becomes(pki, port, SERVING, within=20)
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
        # The next round of the monitor finds it out: within one interval (and the probe's own time).
        await health_becomes(pki, port, NOT_SERVING, within=3 * INTERVAL + 2)
        async with secure_channel(pki, "jiangsu", port) as channel:  # and Submit says so, storing nothing
            notice = outbound_messages(CasePlan.synthetic("320100", "330100", seed=1))[0]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await exchange_pb2_grpc.ExchangeStub(channel).Submit(sign(notice, signer(pki, "jiangsu")),
                                                                     timeout=DEADLINE)
            assert (failure(caught.value).code, failure(caught.value).reason) == (
                grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        await health_becomes(pki, port, SERVING, within=3 * INTERVAL + 2)
        proc.terminate()
        said = events(await log)
    unavailable = [e for e in said if e["event"] == "store unavailable"]
    assert [e["level"] for e in unavailable] == ["error"] and "disk I/O error" in str(unavailable[0]["detail"])
    assert [e["event"] for e in said if e["logger"] == "gateway.app.monitor" and "store" in str(e["event"])] == [
        "store unavailable", "store available again"]


@pytest.mark.slow
async def test_start_up_refuses_a_sqlite_store_it_cannot_write(pki: DevPaths, tmp_path: Path) -> None:
    port = free_port()
    config = config_file(pki, tmp_path, port, f'sqlite = "{tmp_path / "gateway.db"}"')
    with serving_process(config) as first:  # the database exists, migrated, closed as after any run
        await health_becomes(pki, port, SERVING, within=20)
        first.terminate()
        assert await asyncio.to_thread(first.wait, 20) == 0
    with serving_process(config, preexec_fn=one_byte_files) as proc:
        _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == ExitCode.UNAVAILABLE, err.decode()[-3000:]
    assert f"error: cannot open SQLite store {tmp_path / 'gateway.db'}: disk I/O error (it cannot be written: is " \
           "the disk full, or its file system mounted read-only?)" in err.decode().splitlines()


@pytest.fixture
async def read_only_role() -> AsyncIterator[tuple[str, str]]:
    """A role of its own (`url`, `name`) on the test server, dropped afterwards with what it owns."""
    admin = postgres_url()
    name = f"tg_readonly_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(pgsql.SQL("CREATE ROLE {} LOGIN").format(pgsql.Identifier(name)))
        conn.execute(pgsql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            pgsql.Identifier(conn.info.dbname), pgsql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(admin)
    url = psycopg.conninfo.make_conninfo(**{**info, "user": name})
    try:
        yield url, name
    finally:
        drop_schema(admin, name)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
            conn.execute(pgsql.SQL("DROP OWNED BY {}").format(pgsql.Identifier(name)))
            conn.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(name)))


def set_read_only(role: str, read_only: bool) -> None:
    """The role's sessions from now on read-only (or not), and its current sessions ended: what a
    fail-over to a standby (and back) looks like to the gateway."""
    with psycopg.connect(postgres_url(), autocommit=True) as conn:
        statement = "ALTER ROLE {} SET default_transaction_read_only = on" if read_only else \
            "ALTER ROLE {} RESET default_transaction_read_only"
        conn.execute(pgsql.SQL(statement).format(pgsql.Identifier(role)))
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))


async def test_postgresql_turned_read_only_turns_health_not_serving_and_back(
    pki: DevPaths, tmp_path: Path, read_only_role: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    url, role = read_only_role
    store = PostgresConfig(url=url, schema=role, pool_min=1, pool_max=4, timeout=2.0)
    server = assemble(replace(gateway_config(pki, tmp_path / "unused.db"), store=store, monitor_interval=INTERVAL))
    await server.start()
    handle = GatewayHandle(server=server, pki=pki, database=tmp_path / "unused.db")
    try:
        set_read_only(role, True)
        await health_becomes(pki, server.port, NOT_SERVING, within=3 * INTERVAL + 4)
        errors = [r for r in caplog.records if r.getMessage() == "store unavailable"]
        assert len(errors) == 1 and errors[0].levelname == "ERROR"  # once, whatever ended the sessions first
        assert server.prometheus.get_sample_value("transfer_gateway_store_available") == 0
        with pytest.raises(StoreUnavailable, match="read-only transaction"):  # what each round now finds
            await server.monitor.probe_store()
        set_read_only(role, False)
        await health_becomes(pki, server.port, SERVING, within=3 * INTERVAL + 4)
        await handle.submit("jiangsu", outbound_messages(CasePlan.synthetic("320100", "330100", seed=2))[0])
    finally:
        await handle.close_channels()
        await server.stop(grace=0.1)


async def test_start_up_refuses_a_read_only_postgresql(
    pki: DevPaths, tmp_path: Path, read_only_role: tuple[str, str]
) -> None:
    url, role = read_only_role
    config = replace(gateway_config(pki, tmp_path / "unused.db"), store=PostgresConfig(url=url, schema=role))
    first = assemble(config)
    await first.start()  # the schema exists, migrated, as after any run
    await first.stop(grace=0.1)
    set_read_only(role, True)
    port = free_port()
    second = assemble(replace(config, listen=f"127.0.0.1:{port}"))
    with pytest.raises((StoreUnavailable, Unavailable)) as refused:
        await second.start()
    assert "read-only" in str(refused.value)
    with socket.socket() as again:  # the refused start-up left nothing listening
        again.bind(("127.0.0.1", port))

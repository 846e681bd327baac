"""Several gateway replicas on one PostgreSQL database, as real processes on loopback: a replica
killed mid-run, and the database restarted mid-run. Afterwards every receipted message is stored
once, in a gapless log, every delivery reached its receiver, no case moved money twice, and the
settlement ledger balances."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2

from clients.deliveries import VerifiedDelivery
from clients.platform import PlatformClient, PlatformConfig
from clients.reviewer import OperatorConfig, ReviewerClient
from clients.scenario import CasePlan, outbound_messages, run_cases
from gateway.app.devpki import DevPaths
from gateway.core.messages import parse
from mitransfer.v1 import envelope_pb2, exchange_pb2_grpc, tracking_pb2, types_pb2
from tests.support import (
    drop_schema,
    free_port,
    postgres_url,
    secure_channel,
    sign,
    signer,
    start_gateway_process,
    wait_serving,
)

pytestmark = pytest.mark.slow
ACKNOWLEDGED = tracking_pb2.DELIVERY_STATE_ACKNOWLEDGED


@dataclass
class Cluster:
    pki: DevPaths
    url: str
    schema: str
    ports: list[int]
    processes: list[subprocess.Popen[bytes]]

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def sql(self, query: str) -> list[tuple[object, ...]]:
        with psycopg.connect(self.url, options=f"-c search_path={self.schema}") as conn:
            return conn.execute(query).fetchall()  # type: ignore[arg-type]


@pytest.fixture
def schema() -> Iterator[tuple[str, str]]:
    url, name = postgres_url(), f"replicas_{uuid.uuid4().hex[:12]}"
    yield url, name
    drop_schema(url, name)


async def start_cluster(pki: DevPaths, tmp_path: Path, url: str, schema: str, replicas: int,
                        processes: list[subprocess.Popen[bytes]]) -> Cluster:
    """Replicas that give up on an unreachable database after 1 s (UNAVAILABLE)."""
    ports = [free_port() for _ in range(replicas)]
    for i, port in enumerate(ports):  # started together: migrations must serialize themselves
        processes.append(start_gateway_process(
            pki, tmp_path / f"replica{i}.toml", port, tmp_path / f"replica{i}.log",
            f'postgresql = "{url}"\nschema = "{schema}"\ntimeout_seconds = 1\npool_max = 4',
            extra="monitor_interval_seconds = 0.2"))
    for port in ports:
        await wait_serving(pki, port)
    return Cluster(pki, url, schema, ports, processes)


@pytest.fixture
async def clients_of(pki: DevPaths) -> AsyncIterator[object]:
    async with AsyncExitStack() as stack:
        async def connect(addresses: str) -> tuple[PlatformClient, PlatformClient, ReviewerClient]:
            js, zj = [await stack.enter_async_context(PlatformClient.connect(
                PlatformConfig.dev(p, addresses, pki.root))) for p in ("jiangsu", "zhejiang")]
            reviewer = await stack.enter_async_context(
                ReviewerClient.connect(OperatorConfig.dev("reviewer", addresses, pki.root)))
            return js, zj, reviewer
        yield connect


def check_store(cluster: Cluster) -> None:
    """The invariants that must hold after any fault."""
    count, first, last, distinct = cluster.sql(
        "SELECT COUNT(*), MIN(sequence), MAX(sequence), COUNT(DISTINCT message_id) FROM"
        " (SELECT sequence, message_id FROM messages UNION ALL SELECT sequence, message_id FROM index_messages) m")[0]
    assert (first, last, distinct) == (1, count, count)  # gapless across both logs' tables, each message once
    assert cluster.sql("SELECT transfer_id FROM fund_movements GROUP BY transfer_id HAVING COUNT(*) > 1") == []
    assert cluster.sql(
        "SELECT COUNT(*) FROM cases c JOIN fund_movements f ON f.transfer_id = c.transfer_id"
        " WHERE f.amount_fen <> c.balance_fen") == [(0,)]
    # Every fund transfer of a completed case was credited: nothing in flight or held remains.
    assert cluster.sql("SELECT status, COUNT(*) FROM fund_movements WHERE status <> 'credited' GROUP BY 1") == []


async def all_acknowledged(cluster: Cluster, platforms: list[PlatformClient], timeout: float = 15) -> None:
    """Keep the platforms subscribed until every delivery is acknowledged (what was leased on a
    dead replica comes again after the visibility timeout; duplicates are dropped by message id)."""
    async def drop(_delivery: VerifiedDelivery) -> None:
        return None

    stop = asyncio.Event()
    subscriptions = [asyncio.create_task(p.subscribe(drop, stop=stop)) for p in platforms]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            open_ = cluster.sql(f"SELECT COUNT(*) FROM deliveries WHERE state <> {ACKNOWLEDGED}")[0][0]
            if open_ == 0:
                return
            assert loop.time() < deadline, f"{open_} deliveries never acknowledged"
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.gather(*subscriptions)


async def test_a_replica_killed_mid_run_loses_nothing(
    pki: DevPaths, tmp_path: Path, schema: tuple[str, str], processes: list[subprocess.Popen[bytes]],
    clients_of: object,
) -> None:
    cluster = await start_cluster(pki, tmp_path, *schema, replicas=2, processes=processes)
    js, zj, reviewer = await clients_of(cluster.addresses)  # type: ignore[operator]
    killed = asyncio.Event()

    def progress(done: int, total: int) -> None:
        if done >= 10 and not killed.is_set():
            processes[0].send_signal(signal.SIGKILL)
            killed.set()

    result = await run_cases(js, zj, transfers=40, a_agencies=("320100", "320500"),
                             b_agencies=("330100", "330200"), reviewer=reviewer, on_progress=progress, timeout=120)
    assert killed.is_set() and processes[0].wait(5) == -signal.SIGKILL
    assert (result.completed, result.failed) == (40, 0), result.errors
    await all_acknowledged(cluster, [js, zj])
    check_store(cluster)
    assert cluster.sql(f"SELECT COUNT(*) FROM cases WHERE state = {tracking_pb2.CASE_STATE_COMPLETED}") == [(40,)]


async def test_a_message_accepted_by_one_replica_reaches_a_subscriber_of_the_other_at_once(
    pki: DevPaths, tmp_path: Path, schema: tuple[str, str], processes: list[subprocess.Popen[bytes]],
    clients_of: object,
) -> None:
    cluster = await start_cluster(pki, tmp_path, *schema, replicas=2, processes=processes)
    [_, zj, _] = await clients_of(f"127.0.0.1:{cluster.ports[1]}")  # type: ignore[operator]
    [js, _, _] = await clients_of(f"127.0.0.1:{cluster.ports[0]}")  # type: ignore[operator]
    got = asyncio.Event()
    seen: list[float] = []

    async def handler(delivery: object) -> None:
        seen.append(asyncio.get_running_loop().time())
        got.set()

    stop = asyncio.Event()
    subscription = asyncio.create_task(zj.subscribe(handler, stop=stop))
    await asyncio.sleep(1.5)  # subscribed and idle: its replica now waits between polls
    plan = CasePlan.synthetic("320100", "330100", insurance_type=types_pb2.INSURANCE_TYPE_RESIDENT_BASIC, seed=5)
    sent = asyncio.get_running_loop().time()
    await js.submit(outbound_messages(plan)[0])
    await asyncio.wait_for(got.wait(), 5)
    stop.set()
    await subscription
    assert seen[0] - sent < 0.5  # NOTIFY, not the 1 s poll


def pg_ctl(action: str) -> None:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action], check=True,
                   capture_output=True, timeout=60)


async def test_database_restart_mid_run_receipts_only_what_was_committed(
    pki: DevPaths, tmp_path: Path, schema: tuple[str, str], processes: list[subprocess.Popen[bytes]],
) -> None:
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        pytest.skip("SKIPPED, NOT TESTED: needs the local PostgreSQL cluster (pg_ctlcluster) to restart it")
    cluster = await start_cluster(pki, tmp_path, *schema, replicas=1, processes=processes)
    key = signer(pki, "jiangsu")
    signed = [sign(outbound_messages(CasePlan.synthetic("320100", "330100", seed=7000 + i))[0], key)
              for i in range(60)]
    receipts: dict[str, envelope_pb2.Receipt] = {}
    unavailable = 0
    async with secure_channel(pki, "jiangsu", cluster.ports[0]) as channel:
        stub = exchange_pb2_grpc.ExchangeStub(channel)

        async def submit(messages: list[envelope_pb2.SignedMessage]) -> None:
            nonlocal unavailable
            for message in messages:
                while True:  # the same signed bytes again until a receipt: idempotent
                    try:
                        receipts[parse(message.kind, message.payload).header.message_id] = await stub.Submit(
                            message, timeout=5)
                        break
                    except grpc.aio.AioRpcError as err:
                        assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), err
                        unavailable += 1
                        await asyncio.sleep(0.2)

        await submit(signed[:15])
        racing = asyncio.create_task(submit(signed[15:20]))  # racing the shutdown: kept whole or not at all
        try:
            await asyncio.to_thread(pg_ctl, "stop")
            await wait_serving(pki, cluster.ports[0], timeout=10, want=health_pb2.HealthCheckResponse.NOT_SERVING)
            sender = asyncio.create_task(submit(signed[20:]))  # meets the outage first
            for _ in range(100):  # until the outage has been answered UNAVAILABLE (≈ 1 s pool timeout)
                if unavailable:
                    break
                await asyncio.sleep(0.1)
        finally:
            await asyncio.to_thread(pg_ctl, "start")
        await wait_serving(pki, cluster.ports[0], timeout=30)
        await asyncio.wait_for(asyncio.gather(racing, sender), 60)
    assert unavailable > 0  # the outage was seen, and answered UNAVAILABLE
    assert len(receipts) == len(signed)
    stored = dict(cluster.sql("SELECT message_id, receipt FROM messages"))  # type: ignore[arg-type]
    assert {m: bytes(r) for m, r in stored.items()} == {m: r.SerializeToString() for m, r in receipts.items()}
    check_store(cluster)

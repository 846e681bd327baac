"""Automatic transfer across two gateway replicas on one PostgreSQL database, as real processes:
registrations and enrollments of one person race through both replicas at once, in both orders,
and each suspended record opens exactly one case."""

from __future__ import annotations

import asyncio
import subprocess
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from clients.errors import GatewayRejected
from clients.platform import PlatformClient, PlatformConfig
from gateway.app.devpki import DevPaths
from mitransfer.v1 import envelope_pb2, messages_pb2
from tests.app.test_replicas import schema, start_cluster  # noqa: F401 (the fixture)
from tests.scenarios.test_automatic import ANHUI, opened_of, race_messages

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("first", ["records", "enrollments"])
async def test_two_replicas_open_exactly_one_case_per_record(
        pki: DevPaths, tmp_path: Path, schema: tuple[str, str],  # noqa: F811
        processes: list[subprocess.Popen[bytes]], first: str) -> None:
    url, name = schema
    cluster = await start_cluster(pki, tmp_path, url, name, 2, processes)
    records, reports, ids = race_messages(first, seed=50 if first == "records" else 51)
    async with AsyncExitStack() as stack:
        async def connect(platform: str, port: int) -> PlatformClient:
            return await stack.enter_async_context(
                PlatformClient.connect(PlatformConfig.dev(platform, f"127.0.0.1:{port}", pki.root)))

        # Every platform on both replicas; the i-th message goes through replica i % 2.
        clients = {(p, i): await connect(p, port) for p in ("jiangsu", "anhui", "zhejiang")
                   for i, port in enumerate(cluster.ports)}
        signed = {id(m): clients[("anhui" if m.header.sender == ANHUI else "jiangsu", 0)].sign(m)  # type: ignore[attr-defined]
                  for m in records}

        async def send(i: int, message: object) -> object:
            replica = i % 2
            try:
                if id(message) in signed:
                    sender = "anhui" if message.header.sender == ANHUI else "jiangsu"  # type: ignore[attr-defined]
                    return (await clients[(sender, replica)].submit_signed(signed[id(message)])).body
                return await clients[("zhejiang", replica)].submit(message)  # type: ignore[arg-type]
            except GatewayRejected as err:
                return err

        pairs = list(zip(records, reports, strict=True))
        ordered = [m for a, b in pairs for m in ((a, b) if first == "records" else (b, a))]
        outcomes = await asyncio.gather(*(send(i, m) for i, m in enumerate(ordered)))
        assert sorted(opened_of(outcomes)) == sorted(ids)
        refused = {o.reason for o in outcomes if isinstance(o, GatewayRejected)}
        assert refused <= {"TRANSFER_ID_IN_USE"}, refused
        for tid in ids:
            case = await clients[("zhejiang", 1)].get_case(tid)
            kinds = [m.kind for m in case.messages]
            assert kinds.count(envelope_pb2.MESSAGE_KIND_AUTOMATIC_TRANSFER_REQUEST) == 1
            assert case.channel == messages_pb2.TransferRequest.CHANNEL_AUTOMATIC
    assert cluster.sql("SELECT COUNT(*) FROM automatic_cases") == [(2,)]
    assert cluster.sql("SELECT COUNT(*) FROM suspended_records WHERE state = 'opened'") == [(2,)]
    # One log across the replicas: the cases' messages and the index's, gapless together.
    count, last = cluster.sql("SELECT COUNT(*), MAX(sequence) FROM (SELECT sequence FROM messages UNION ALL"
                              " SELECT sequence FROM index_messages) AS logged")[0]
    assert count == last

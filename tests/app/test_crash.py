"""Crash safety: a gateway killed with SIGKILL in the middle of a run and restarted keeps every
receipted message, redelivers what was not acknowledged, and never holds two fund transfers
for one case. The gateway runs as a real process (`transfer-gateway serve`) on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import grpc
import pytest

from clients.builders import fund_account, fund_transfer, today_in_china
from clients.scenario import CasePlan, outbound_messages
from gateway.app.devpki import DevPaths
from mitransfer.v1 import envelope_pb2, exchange_pb2, exchange_pb2_grpc, types_pb2
from tests.support import failure, free_port, secure_channel, sign, signer, start_gateway_process, wait_serving

pytestmark = pytest.mark.slow


def start_gateway(pki: DevPaths, database: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`transfer-gateway serve --config` as an operator runs it, with a short visibility timeout."""
    return start_gateway_process(pki, database.parent / "gateway.toml", port, log, f'sqlite = "{database.name}"')


async def test_sigkill_mid_run_loses_nothing_and_never_doubles_funds(
    pki: DevPaths, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    database, log, port = tmp_path / "gateway.db", tmp_path / "gateway.log", free_port()
    key = signer(pki, "jiangsu")
    cases = []
    for i in range(40):
        plan = CasePlan.synthetic("320100", "330100", insurance_type=types_pb2.INSURANCE_TYPE_EMPLOYEE_BASIC,
                                  balance_fen=10_000 + i, seed=1000 + i)
        msgs = [sign(m, key) for m in outbound_messages(plan)]
        # A second, different fund transfer for the same case: it must never be accepted too.
        rival = fund_transfer(plan.route, plan.balance_fen, fund_account("320100", receiving=False),
                              fund_account("330100", receiving=True), f"RIVAL{i:04d}", today_in_china())
        cases.append((msgs, sign(rival, key)))

    processes.append(start_gateway(pki, database, port, log))
    await wait_serving(pki, port)

    receipts: dict[str, envelope_pb2.Receipt] = {}
    acked: set[str] = set()
    attempted: set[str] = set()
    channel = secure_channel(pki, "jiangsu", port)
    inbound = secure_channel(pki, "zhejiang", port)
    exchange = exchange_pb2_grpc.ExchangeStub(channel)
    receiver = exchange_pb2_grpc.ExchangeStub(inbound)

    def message_id(sm: envelope_pb2.SignedMessage) -> str:
        from gateway.core.messages import parse
        return parse(sm.kind, sm.payload).header.message_id

    async def submit(sm: envelope_pb2.SignedMessage) -> bool:
        try:
            receipts[message_id(sm)] = await exchange.Submit(sm, timeout=5)
        except grpc.aio.AioRpcError:
            return False  # refused (the losing fund transfer) or the gateway died
        return True

    async def drive(msgs: list[envelope_pb2.SignedMessage], rival: envelope_pb2.SignedMessage) -> None:
        notice, table, fund = msgs
        if await submit(notice) and await submit(table):
            await asyncio.gather(submit(fund), submit(rival))  # two fund transfers race

    async def acknowledge_some() -> None:
        call = receiver.Subscribe(exchange_pb2.SubscribeRequest())
        n = 0
        try:
            async for delivery in call:
                n += 1
                if n % 2:  # leave every other delivery unacknowledged
                    mid = envelope_pb2.ReceiptBody.FromString(delivery.receipt.body).message_id
                    attempted.add(mid)  # if the crash eats the answer, the ack may or may not stand
                    await receiver.AckDelivery(exchange_pb2.AckDeliveryRequest(message_id=mid), timeout=5)
                    acked.add(mid)
        except grpc.aio.AioRpcError:
            pass

    subscriber = asyncio.create_task(acknowledge_some())
    drivers = asyncio.gather(*(drive(m, r) for m, r in cases))
    while len(receipts) < 45:
        await asyncio.sleep(0.002)
    os.kill(processes[0].pid, signal.SIGKILL)
    processes[0].wait()
    await drivers
    await asyncio.wait_for(subscriber, 10)
    await channel.close()
    await inbound.close()
    assert 45 <= len(receipts) < 3 * len(cases), "the kill must land mid-run"

    processes.append(start_gateway(pki, database, port, log))
    await wait_serving(pki, port)
    async with secure_channel(pki, "jiangsu", port) as channel, secure_channel(pki, "zhejiang", port) as inbound:
        exchange = exchange_pb2_grpc.ExchangeStub(channel)
        receiver = exchange_pb2_grpc.ExchangeStub(inbound)
        # Every receipted message survived, and a replay returns its original receipt.
        for msgs, rival in cases:
            for sm in (*msgs, rival):
                mid = message_id(sm)
                if mid in receipts:
                    assert await exchange.Submit(sm) == receipts[mid]
        # Finish the run: resend everything in order; of the two fund transfers exactly one is
        # accepted (replays of the winner return its receipt), the other is refused.
        accepted: set[str] = set()
        for (notice, table, fund), rival in cases:
            for sm in (notice, table):
                await exchange.Submit(sm)
                accepted.add(message_id(sm))
            winners = []
            for sm in (fund, rival):
                try:
                    await exchange.Submit(sm)
                    winners.append(message_id(sm))
                except grpc.aio.AioRpcError as err:
                    assert failure(err).code == grpc.StatusCode.FAILED_PRECONDITION
            assert len(winners) == 1
            accepted.update(winners)

        # Everything not acknowledged before the crash is delivered now; nothing acknowledged is.
        delivered: set[str] = set()
        uncertain = attempted - acked
        call = receiver.Subscribe(exchange_pb2.SubscribeRequest())
        while missing := accepted - acked - delivered:
            try:
                delivery = await asyncio.wait_for(call.read(), 3 if missing <= uncertain else 10)
            except TimeoutError:
                assert missing <= uncertain, f"{len(missing)} accepted messages never delivered"
                break
            mid = envelope_pb2.ReceiptBody.FromString(delivery.receipt.body).message_id
            assert mid not in acked
            delivered.add(mid)
            await receiver.AckDelivery(exchange_pb2.AckDeliveryRequest(message_id=mid))
        call.cancel()

    with sqlite3.connect(database) as db:
        doubled = db.execute(
            "SELECT transfer_id FROM messages WHERE kind = ? GROUP BY transfer_id HAVING COUNT(*) > 1",
            (envelope_pb2.MESSAGE_KIND_FUND_TRANSFER,),
        ).fetchall()
        movements = db.execute("SELECT COUNT(*) FROM fund_movements").fetchone()[0]
    assert doubled == []
    assert movements == len(cases)


async def test_sigterm_drains_and_exits_cleanly(
    pki: DevPaths, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    database, log, port = tmp_path / "gateway.db", tmp_path / "gateway.log", free_port()
    processes.append(start_gateway(pki, database, port, log))
    await wait_serving(pki, port)
    key = signer(pki, "jiangsu")
    async with secure_channel(pki, "jiangsu", port) as channel, secure_channel(pki, "zhejiang", port) as inbound:
        exchange = exchange_pb2_grpc.ExchangeStub(channel)
        stream = exchange_pb2_grpc.ExchangeStub(inbound).Subscribe(exchange_pb2.SubscribeRequest())
        plans = [CasePlan.synthetic("320100", "330100", balance_fen=500, seed=i) for i in range(5)]
        receipts = await asyncio.gather(*(exchange.Submit(sign(outbound_messages(p)[0], key)) for p in plans))
        processes[0].send_signal(signal.SIGTERM)
        # The open subscription is ended by the server, not cut: a clean end of stream.
        async for _ in stream:
            pass
        assert await asyncio.to_thread(processes[0].wait, 15) == 0
    with sqlite3.connect(database) as db:
        stored = {row[0] for row in db.execute("SELECT message_id FROM messages")}
    assert {envelope_pb2.ReceiptBody.FromString(r.body).message_id for r in receipts} <= stored
    assert '"event": "draining"' in log.read_text() and '"event": "stopped"' in log.read_text()

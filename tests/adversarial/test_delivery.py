"""Receivers that do not read, read nothing at all, or cannot take what they are sent: none may
cost another subscriber its deliveries, nor an idle gateway its time. Store calls are counted
(`transfer_gateway_delivery_claims_total`), never time; every loop is bounded in count and every
call carries a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from clients.builders import EMPLOYEE
from clients.scenario import CasePlan, outbound_messages
from gateway.app.assembly import assemble
from gateway.app.config import GatewayConfig
from gateway.app.devpki import DevPaths
from gateway.core import messages
from gateway.core.quota import Quota
from gateway.core.signing import pae
from mitransfer.v1 import admin_pb2, envelope_pb2, exchange_pb2, exchange_pb2_grpc
from tests.adversarial.test_flood import notices
from tests.conftest import test_config as base_config
from tests.support import GatewayHandle, failure, sign, signer

DEADLINE = 10.0
ROOMY = Quota(requests_per_second=1e6, burst=10**6, subscriptions=500)


@asynccontextmanager
async def running(config: GatewayConfig, pki: DevPaths, database: Path) -> AsyncIterator[GatewayHandle]:
    server = assemble(config)
    await server.start()
    handle = GatewayHandle(server=server, pki=pki, database=database)
    try:
        yield handle
    finally:
        await handle.close_channels()
        await server.stop(grace=0.1)


def config_for(pki: DevPaths, tmp_path: Path, **delivery: object) -> GatewayConfig:
    config = base_config(pki, tmp_path / "gateway.db")
    return replace(config, quota=ROOMY, delivery=replace(config.delivery, **delivery))  # type: ignore[arg-type]


def claims(gateway: GatewayHandle) -> float:
    return gateway.server.prometheus.get_sample_value(
        "transfer_gateway_delivery_claims_total", {"platform": "zhejiang"}) or 0


async def submit_all(gateway: GatewayHandle, requests: list[bytes]) -> list[str]:
    """Submit signed notices; their message ids in submission (log) order."""
    submit = gateway.channel("jiangsu").unary_unary("/mitransfer.v1.Exchange/Submit")
    ids = []
    for request in requests:
        receipt = envelope_pb2.Receipt.FromString(await submit(request, timeout=DEADLINE))
        ids.append(envelope_pb2.ReceiptBody.FromString(receipt.body).message_id)
    return ids


async def test_a_subscriber_that_never_reads_holds_its_window_and_costs_the_healthy_one_nothing(
        pki: DevPaths, tmp_path: Path) -> None:
    window = 8
    async with running(config_for(pki, tmp_path, window=window), pki, tmp_path / "gateway.db") as gateway:
        sent = await submit_all(gateway, notices(pki, "jiangsu", "320100", "330100", 30, first_seed=1))
        silent = gateway.exchange("zhejiang").Subscribe(exchange_pb2.SubscribeRequest())
        for _ in range(500):  # until it has claimed (bounded)
            if claims(gateway) >= 1:
                break
            await asyncio.sleep(0.01)
        healthy = gateway.exchange("zhejiang")
        call = healthy.Subscribe(exchange_pb2.SubscribeRequest())
        acked: dict[str, int] = {}
        for _ in range(200):  # reads and acknowledges until every message is acknowledged (bounded)
            delivery = await asyncio.wait_for(call.read(), DEADLINE)
            message_id = envelope_pb2.ReceiptBody.FromString(delivery.receipt.body).message_id
            await healthy.AckDelivery(exchange_pb2.AckDeliveryRequest(message_id=message_id), timeout=DEADLINE)
            acked[message_id] = delivery.attempt
            if len(acked) == len(sent):
                break
        call.cancel()
        held = []  # what the silent stream was sent: still in its buffers, then its end
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            for _ in range(window + 1):
                held.append(await asyncio.wait_for(silent.read(), DEADLINE))
        dead = gateway.count("deliveries", "state = 4")

    assert set(acked) == set(sent) and dead == 0
    assert len(held) == window  # it held its window, and never more
    assert ended.value.code() == grpc.StatusCode.ABORTED and failure(ended.value).reason == "SUBSCRIPTION_STALLED"
    assert sorted(acked.values()).count(2) == 1 and max(acked.values()) == 2  # one attempt lost, not eight


async def test_idle_subscriptions_cost_no_store_calls(pki: DevPaths, tmp_path: Path) -> None:
    """As many idle subscriptions as open quickly (200): each asks the store once when it opens,
    then nothing, whatever the time; one new message costs a claim or two, not 200."""
    async with running(config_for(pki, tmp_path), pki, tmp_path / "gateway.db") as gateway:
        stubs = [gateway.exchange("zhejiang") for _ in range(4)]
        calls = [stubs[i % 4].Subscribe(exchange_pb2.SubscribeRequest()) for i in range(200)]
        for _ in range(1000):  # until every subscription has looked once (bounded)
            if claims(gateway) >= 200:
                break
            await asyncio.sleep(0.01)
        opened = claims(gateway)
        await asyncio.sleep(2.0)  # four visibility timeouts: a poll per stream would be 800 claims here
        idle = claims(gateway) - opened
        await submit_all(gateway, notices(pki, "jiangsu", "320100", "330100", 1, first_seed=5))
        reads = [asyncio.ensure_future(call.read()) for call in calls]
        done, _ = await asyncio.wait(reads, timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED)
        woken = claims(gateway) - opened - idle
        for read in reads:
            read.cancel()
        for call in calls:
            call.cancel()

    assert opened == 200 and idle == 0
    assert len(done) == 1 and 1 <= woken <= 2


def padded(pki: DevPaths, seed: int, pad: int) -> bytes:
    """A valid notice whose payload carries `pad` bytes in a field the contract does not define
    (kept, signed and delivered like the rest of the payload)."""
    notice = outbound_messages(CasePlan.synthetic("320100", "330100", insurance_type=EMPLOYEE, balance_fen=100,
                                                  seed=seed))[0]
    unknown = _varint((1000 << 3) | 2) + _varint(pad) + b"\x00" * pad
    payload = notice.SerializeToString() + unknown
    key = signer(pki, "jiangsu")
    kind = messages.kind_of(notice)
    return envelope_pb2.SignedMessage(kind=kind, payload=payload, key_id=key.key_id,
                                      signature=key.sign(pae(messages.payload_type(kind), payload))).SerializeToString()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


async def test_a_delivery_larger_than_the_receiver_takes_does_not_take_the_50_ordinary_ones_with_it(
        pki: DevPaths, tmp_path: Path) -> None:
    """The receiver accepts at most 4 KiB per message; one accepted notice of ~10 KiB is first in
    line, 50 ordinary ones behind it, all leased together. Each time the receiver's stream fails
    on it, only it counts an attempt: it alone is dead-lettered (STREAM_ENDED), the 50 arrive."""
    config = config_for(pki, tmp_path)
    async with running(config, pki, tmp_path / "gateway.db") as gateway:
        [poison] = await submit_all(gateway, [padded(pki, 1, 10_000)])
        ordinary = await submit_all(gateway, notices(pki, "jiangsu", "320100", "330100", 50, first_seed=100))
        narrow = grpc.aio.secure_channel(
            f"127.0.0.1:{gateway.server.port}", _credentials(pki, "zhejiang"),
            options=[("grpc.max_receive_message_length", 4096)])
        receiver = exchange_pb2_grpc.ExchangeStub(narrow)
        acked: set[str] = set()
        failures: list[grpc.StatusCode] = []
        try:
            for _ in range(12):  # reopen after each failure, as a platform's client does (bounded)
                call = receiver.Subscribe(exchange_pb2.SubscribeRequest())
                try:
                    while len(acked) < len(ordinary):
                        delivery = await asyncio.wait_for(call.read(), DEADLINE)
                        message_id = envelope_pb2.ReceiptBody.FromString(delivery.receipt.body).message_id
                        await receiver.AckDelivery(exchange_pb2.AckDeliveryRequest(message_id=message_id),
                                                   timeout=DEADLINE)
                        acked.add(message_id)
                except grpc.aio.AioRpcError as err:
                    failures.append(err.code())
                finally:
                    call.cancel()
                if len(acked) == len(ordinary):
                    break
            letters = await gateway.admin("operator").ListDeadLetters(
                admin_pb2.ListDeadLettersRequest(platform="zhejiang"), timeout=DEADLINE)
        finally:
            await narrow.close()

    assert acked == set(ordinary)
    assert failures == [grpc.StatusCode.RESOURCE_EXHAUSTED] * config.delivery.max_attempts
    assert [(d.message_id, d.reason, d.attempts) for d in letters.dead_letters] == [
        (poison, "STREAM_ENDED", config.delivery.max_attempts)]
    assert letters.dead_letters[0].size_bytes > 10_000


def _credentials(pki: DevPaths, platform: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes(),
                                        private_key=pki.platform_key(platform).read_bytes(),
                                        certificate_chain=pki.platform_cert(platform).read_bytes())


async def test_subscribers_of_one_platform_share_the_work_and_each_case_stays_in_order(
        pki: DevPaths, tmp_path: Path) -> None:
    """Two subscribers of Zhejiang, each acknowledging what it reads; 12 cases of three messages
    each. Both take part, and no message of a case is delivered before the one before it was
    acknowledged, whichever subscriber had it."""
    window = 4
    async with running(config_for(pki, tmp_path, window=window), pki, tmp_path / "gateway.db") as gateway:
        key = gateway.signer("jiangsu")
        plans = [CasePlan.synthetic("320100", "330100", insurance_type=EMPLOYEE, balance_fen=100 + i, seed=200 + i)
                 for i in range(12)]
        cases = [[sign(m, key).SerializeToString() for m in outbound_messages(plan)] for plan in plans]
        ids = [await submit_all(gateway, case) for case in cases]
        events: list[tuple[str, str]] = []  # ("read" | "acked", message id), in the order they happened
        total = sum(len(case) for case in ids)
        everything = asyncio.Event()

        async def subscriber() -> int:
            stub = gateway.exchange("zhejiang")
            call = stub.Subscribe(exchange_pb2.SubscribeRequest())
            finished = asyncio.ensure_future(everything.wait())
            got = 0
            try:
                for _ in range(total):
                    read = asyncio.ensure_future(call.read())
                    await asyncio.wait({read, finished}, timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED)
                    if not read.done():  # the other subscriber acknowledged the last: nothing more comes
                        read.cancel()
                        break
                    message_id = envelope_pb2.ReceiptBody.FromString(read.result().receipt.body).message_id
                    events.append(("read", message_id))
                    got += 1
                    await asyncio.sleep(0.005)  # some work before the acknowledgement
                    await stub.AckDelivery(exchange_pb2.AckDeliveryRequest(message_id=message_id), timeout=DEADLINE)
                    events.append(("acked", message_id))
                    if sum(1 for e, _ in events if e == "acked") == total:
                        everything.set()
            finally:
                finished.cancel()
                call.cancel()
            return got

        shares = await asyncio.gather(subscriber(), subscriber())

    assert everything.is_set() and min(shares) >= window, shares
    first: dict[tuple[str, str], int] = {}
    for i, event in enumerate(events):
        first.setdefault(event, i)
    for case in ids:
        for earlier, later in itertools.pairwise(case):
            assert first[("read", later)] > first[("acked", earlier)], (earlier, later)

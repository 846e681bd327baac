"""The router on a real SQLite store, without gRPC: windows, what a stream that ends or stalls
gives back, deliveries too large to send, and wake-ups counted in store calls."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.core.errors import SubscriptionStalled
from gateway.service.metrics import Metrics
from gateway.service.routing import DeliveryConfig, Router, Subscription
from gateway.store import CaseQuery, DeadLetterQuery, IncomingMessage
from gateway.store.sqlite import SQLiteConfig, SQLiteStore
from tests.store.support import SLA, incoming, opening, receipt_for

BOUND = 200  # waits in this module's loops, in steps of 10 ms: a hang fails, nothing is timed


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Setup:
    store: SQLiteStore
    router: Router
    prometheus: CollectorRegistry

    async def message(self, body: bytes = b"notice") -> IncomingMessage:
        m = incoming(f"t-{id(body)}-{len(body)}-{now().timestamp()}", body=body)
        await self.store.accept(m, opening(m), receipt_for(m))
        self.router.notify("zhejiang")
        return m

    async def states(self) -> dict[str, tuple[int, int]]:
        """(state, attempts) of every delivery, by message id."""
        views = [await self.store.get_case(t) for t in await self._cases()]
        return {m.message_id: (m.delivery_state, m.delivery_attempts) for v in views if v for m in v.messages}

    async def _cases(self) -> list[str]:
        return [v.case.transfer_id for v in await self.store.list_cases(CaseQuery(limit=500))]

    def claims(self) -> float:
        return self.prometheus.get_sample_value("transfer_gateway_delivery_claims_total", {"platform": "zhejiang"}) or 0


async def make(tmp_path: Path, max_bytes: int = 4 << 20) -> Setup:
    store = SQLiteStore(SQLiteConfig(path=tmp_path / "store.db"), now, SLA)
    await store.open()
    prometheus = CollectorRegistry()
    config = DeliveryConfig(visibility_timeout=0.3, max_attempts=3, window=3)
    router = Router(store, config, now, Metrics(prometheus), max_delivery_bytes=max_bytes)
    router.start()
    return Setup(store, router, prometheus)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    s = await make(tmp_path)
    yield s
    s.router.close()
    await s.router.wait_closed()
    await s.store.close()


async def until(condition: object) -> None:
    for _ in range(BOUND):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached")


class Reader:
    """A stream's consumer: takes deliveries as they come, in a task of its own (as grpc runs a handler)."""

    def __init__(self, router: Router, agencies: frozenset[str] | None = None) -> None:
        self.got: list[tuple[str, int]] = []
        self.error: BaseException | None = None
        self.subscription: Subscription | None = None
        self.task = asyncio.create_task(self._run(router, agencies))

    async def _run(self, router: Router, agencies: frozenset[str] | None) -> None:
        try:
            async with router.subscribe("zhejiang", agencies) as subscription:
                self.subscription = subscription
                async for delivery in subscription:
                    self.got.append((delivery.message_id, delivery.attempt))
        except SubscriptionStalled as err:
            self.error = err

    async def leave(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_a_stream_holds_at_most_its_window_and_takes_more_as_it_acknowledges(setup: Setup) -> None:
    sent = [await setup.message(f"m{i}".encode()) for i in range(7)]
    reader = Reader(setup.router)
    await until(lambda: len(reader.got) == 3)
    await asyncio.sleep(0.05)  # nothing more is handed out meanwhile
    assert len(reader.got) == 3 and reader.subscription is not None and len(reader.subscription.held) == 3
    for message_id, _ in list(reader.got):
        await setup.store.ack_delivery("zhejiang", message_id, now())
        setup.router.acknowledged("zhejiang", message_id)
    await until(lambda: len(reader.got) == 6)
    assert [m for m, _ in reader.got] == [m.message_id for m in sent[:6]]  # in log order
    await reader.leave()


async def test_a_stream_that_ends_returns_the_unsent_uncounted_and_counts_only_its_first_sent(setup: Setup) -> None:
    sent = [await setup.message(f"m{i}".encode()) for i in range(3)]
    reader = Reader(setup.router)
    await until(lambda: len(reader.got) == 3)
    await setup.store.ack_delivery("zhejiang", sent[0].message_id, now())
    setup.router.acknowledged("zhejiang", sent[0].message_id)
    await reader.leave()
    await setup.router.wait_closed()
    for _ in range(BOUND):
        states = await setup.states()
        if states[sent[2].message_id] == (1, 0):
            break
        await asyncio.sleep(0.01)
    # The first unacknowledged it sent counts; the one after it does not (it went out behind it).
    assert states == {sent[0].message_id: (3, 1), sent[1].message_id: (1, 1), sent[2].message_id: (1, 0)}


async def test_a_delivery_that_ends_every_stream_goes_to_the_dead_letters_alone(setup: Setup) -> None:
    poison = await setup.message(b"poison")
    others = [await setup.message(f"m{i}".encode()) for i in range(2)]
    for attempt in range(1, 4):  # max_attempts 3: a receiver that fails on the first it reads, each time
        reader = Reader(setup.router)
        await until(lambda r=reader: len(r.got) == 3)
        assert reader.got[0] == (poison.message_id, attempt)
        assert [a for _, a in reader.got[1:]] == [1, 1]  # the others never counted
        await reader.leave()
        await setup.router.wait_closed()
    [letter] = await setup.store.dead_letters(DeadLetterQuery())
    assert (letter.message_id, letter.reason, letter.attempts) == (poison.message_id, "STREAM_ENDED", 3)
    reader = Reader(setup.router)
    await until(lambda: len(reader.got) == 2)
    assert reader.got == [(m.message_id, 1) for m in others]
    await reader.leave()


async def test_a_delivery_too_large_to_send_is_dead_lettered_unsent(tmp_path: Path) -> None:
    s = await make(tmp_path, max_bytes=2_000)
    try:
        big = await s.message(b"x" * 3_000)
        small = await s.message(b"small")
        reader = Reader(s.router)
        await until(lambda: len(reader.got) == 1)
        assert reader.got == [(small.message_id, 1)]
        for _ in range(BOUND):
            letters = await s.store.dead_letters(DeadLetterQuery())
            if letters:
                break
            await asyncio.sleep(0.01)
        assert [(d.message_id, d.reason, d.size_bytes) for d in letters] == [(big.message_id, "TOO_LARGE", 3_000)]
        await reader.leave()
    finally:
        s.router.close()
        await s.router.wait_closed()
        await s.store.close()


async def test_a_stream_that_acknowledges_nothing_is_ended_and_its_deliveries_go_elsewhere(setup: Setup) -> None:
    sent = [await setup.message(f"m{i}".encode()) for i in range(5)]
    silent = Reader(setup.router)
    await until(lambda: len(silent.got) == 3)
    healthy = Reader(setup.router)
    acked: set[str] = set()
    for _ in range(BOUND * 3):  # the healthy one acknowledges what it gets, until all is acknowledged
        for message_id, _ in healthy.got:
            if message_id not in acked:
                acked.add(message_id)
                await setup.store.ack_delivery("zhejiang", message_id, now())
                setup.router.acknowledged("zhejiang", message_id)
        if len(acked) == 5:
            break
        await asyncio.sleep(0.01)
    await until(lambda: silent.task.done())
    assert isinstance(silent.error, SubscriptionStalled) and silent.error.reason == "SUBSCRIPTION_STALLED"
    assert len(silent.got) == 3  # it held its window, never more
    retried = sorted(a for m, a in healthy.got if m in {m for m, _ in silent.got})
    assert retried == [1, 1, 2]  # only the first it was sent counts an attempt
    assert await setup.store.dead_letters(DeadLetterQuery()) == []
    assert acked == {m.message_id for m in sent}
    await healthy.leave()


async def test_idle_streams_cost_no_store_call_and_news_wakes_one(setup: Setup) -> None:
    readers = [Reader(setup.router) for _ in range(50)]
    await until(lambda: setup.claims() == 50)  # each looks once, when it opens
    await asyncio.sleep(1.0)  # three visibility timeouts: a poll per stream would show here
    assert setup.claims() == 50
    m = await setup.message()
    await until(lambda: sum(len(r.got) for r in readers) == 1)
    assert setup.claims() == 51  # one stream woke, claimed it, found no more
    await setup.store.ack_delivery("zhejiang", m.message_id, now())
    setup.router.on_store_wake("zhejiang", m.message_id)  # as another replica's acknowledgement arrives
    await until(lambda: setup.claims() == 52)  # its holder has room: it looks once more
    for r in readers:
        await r.leave()


async def test_two_streams_of_a_platform_share_a_burst_in_turns(setup: Setup) -> None:
    first, second = Reader(setup.router), Reader(setup.router)
    await until(lambda: setup.claims() == 2)
    for i in range(6):
        await setup.store.accept(m := incoming(f"t-share-{i}"), opening(m), receipt_for(m))
    setup.router.notify("zhejiang")
    await until(lambda: len(first.got) + len(second.got) == 6)
    assert len(first.got) == len(second.got) == 3  # one filled its window, and handed the rest on
    await first.leave()
    await second.leave()


async def test_closing_ends_every_stream_and_returns_all_uncounted(setup: Setup) -> None:
    sent = [await setup.message(f"m{i}".encode()) for i in range(2)]
    reader = Reader(setup.router)
    await until(lambda: len(reader.got) == 2)
    setup.router.close()
    await until(lambda: reader.task.done())
    assert reader.error is None  # the stream ends, as on any drain
    await setup.router.wait_closed()
    assert await setup.states() == {m.message_id: (1, 0) for m in sent}

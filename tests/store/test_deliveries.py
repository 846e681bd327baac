"""The storage contract for deliveries after their lease: ending a lease early (counted, undone or
dead-lettered), a lease taken since left alone, the dead letters listed per platform with their
reason and put back, what has been acknowledged, when leases end. Every engine, through the port."""

from __future__ import annotations

import datetime as dt

from gateway.store import DeadLetterQuery, DeadReason, IncomingMessage, LeaseEnd, Store
from mitransfer.v1 import envelope_pb2
from tests.store.support import Clock, incoming, open_case, opening, receipt_for, same

LEASE = dt.timedelta(seconds=30)


async def claim(store: Store, clock: Clock, platform: str = "zhejiang", limit: int = 10) -> list[tuple[str, int]]:
    got = await store.claim_deliveries(platform, None, limit=limit, lease=LEASE, max_attempts=3, now=clock())
    return [(d.message_id, d.attempt) for d in got.deliveries]


async def test_an_ended_lease_is_claimable_at_once_its_attempt_undone_unless_it_counts(
        store_and_clock: tuple[Store, Clock]) -> None:
    store, clock = store_and_clock
    a, b = await open_case(store), await open_case(store)
    assert await claim(store, clock) == [(a.message_id, 1), (b.message_id, 1)]
    await store.end_leases("zhejiang", [LeaseEnd(a.message_id, "330100", 1, counted=True),
                                        LeaseEnd(b.message_id, "330100", 1, counted=False)], clock())
    # No time has passed: both are claimable again; a's attempt counted, b's did not happen.
    assert await claim(store, clock) == [(a.message_id, 2), (b.message_id, 1)]


async def test_a_lease_taken_since_is_left_alone(store_and_clock: tuple[Store, Clock]) -> None:
    store, clock = store_and_clock
    m = await open_case(store)
    assert await claim(store, clock) == [(m.message_id, 1)]
    clock.advance(31)  # the first lease runs out; another stream leases it again
    assert await claim(store, clock) == [(m.message_id, 2)]
    await store.end_leases("zhejiang", [LeaseEnd(m.message_id, "330100", 1, counted=False,
                                                 dead=DeadReason.STREAM_ENDED)], clock())
    assert await claim(store, clock) == []  # still leased (attempt 2): neither released nor dead-lettered
    assert await store.dead_letters(DeadLetterQuery()) == []
    await store.end_leases("jiangsu", [LeaseEnd(m.message_id, "330100", 2, counted=False)], clock())
    assert await claim(store, clock) == []  # another platform's name ends nothing


async def test_dead_letters_are_listed_per_platform_with_their_reason_in_log_order(
        store_and_clock: tuple[Store, Clock]) -> None:
    store, clock = store_and_clock
    first, second = await open_case(store), await open_case(store)
    table = incoming(first.transfer_id, kind=envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE, body=b"t" * 40)
    other = incoming("t-anhui", receiver_platform="anhui", receiver="340100")
    await store.accept(other, opening(other), receipt_for(other))
    await claim(store, clock)
    await claim(store, clock, "anhui")
    at = clock()
    await store.end_leases("zhejiang", [LeaseEnd(second.message_id, "330100", 1, True, DeadReason.TOO_LARGE),
                                        LeaseEnd(first.message_id, "330100", 1, True, DeadReason.STREAM_ENDED)], at)
    await store.end_leases("anhui", [LeaseEnd(other.message_id, "340100", 1, True, DeadReason.STREAM_ENDED)], at)
    await store.accept(table, same, receipt_for(table))  # behind its case's dead letter: waits

    letters = await store.dead_letters(DeadLetterQuery(platform="zhejiang"))
    assert [(d.message_id, d.reason, d.attempts, d.dead_at, d.kind, d.size_bytes) for d in letters] == [
        (first.message_id, "STREAM_ENDED", 1, at, envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE, len(b"notice")),
        (second.message_id, "TOO_LARGE", 1, at, envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE, len(b"notice"))]
    page = await store.dead_letters(DeadLetterQuery(limit=2))
    rest = await store.dead_letters(DeadLetterQuery(limit=2, after=(page[-1].sequence, page[-1].receiver)))
    assert [d.message_id for d in page + rest] == [first.message_id, second.message_id, other.message_id]
    assert {(c.platform, c.reason, c.count) for c in await store.dead_letter_counts()} == {
        ("zhejiang", "STREAM_ENDED", 1), ("zhejiang", "TOO_LARGE", 1), ("anhui", "STREAM_ENDED", 1)}
    assert await claim(store, clock) == []  # the table waits behind its case's dead letter


async def test_redrive_puts_back_the_named_dead_letters_or_all_of_a_platform(
        store_and_clock: tuple[Store, Clock]) -> None:
    store, clock = store_and_clock
    letters: list[IncomingMessage] = [await open_case(store) for _ in range(3)]
    await claim(store, clock)
    await store.end_leases("zhejiang", [LeaseEnd(m.message_id, "330100", 1, True, DeadReason.STREAM_ENDED)
                                        for m in letters], clock())
    assert await store.redrive("zhejiang", [letters[1].message_id, "no-such-id"], clock()) == 1
    assert await claim(store, clock) == [(letters[1].message_id, 1)]
    assert await store.redrive("anhui", None, clock()) == 0  # another platform's letters only
    assert await store.redrive("zhejiang", None, clock()) == 2
    assert await claim(store, clock) == [(letters[0].message_id, 1), (letters[2].message_id, 1)]
    assert await store.dead_letters(DeadLetterQuery()) == []


async def test_what_was_acknowledged_and_when_leases_end(store_and_clock: tuple[Store, Clock]) -> None:
    store, clock = store_and_clock
    a, b = await open_case(store), await open_case(store)
    assert await store.lease_expiries(["zhejiang"]) == {}
    start = clock()
    await claim(store, clock, limit=1)
    clock.advance(5)
    await claim(store, clock)
    assert await store.lease_expiries(["zhejiang", "anhui"]) == {"zhejiang": start + LEASE}
    await store.ack_delivery("zhejiang", a.message_id, clock())
    assert await store.acknowledged("zhejiang", [a.message_id, b.message_id]) == {a.message_id}
    assert await store.acknowledged("anhui", [a.message_id]) == set()
    assert await store.lease_expiries(["zhejiang"]) == {"zhejiang": start + dt.timedelta(seconds=5) + LEASE}
    assert await store.acknowledged("zhejiang", []) == set() and await store.lease_expiries([]) == {}


async def test_a_dead_letter_acknowledged_late_is_acknowledged(store_and_clock: tuple[Store, Clock]) -> None:
    store, clock = store_and_clock
    m = await open_case(store)
    await claim(store, clock)
    await store.end_leases("zhejiang", [LeaseEnd(m.message_id, "330100", 1, True, DeadReason.STREAM_ENDED)], clock())
    await store.ack_delivery("zhejiang", m.message_id, clock())  # the receiver had it after all
    assert await store.dead_letters(DeadLetterQuery()) == []
    assert await store.acknowledged("zhejiang", [m.message_id]) == {m.message_id}

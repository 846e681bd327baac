"""The storage contract: every Store implementation must pass this suite.

Add an implementation to `STORES` and it runs the same tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway.core.case import Case, CaseIndex, Decision, FundStatus, MessageRef, Side
from gateway.core.errors import IdempotencyConflict, NotFound, RuleViolation
from gateway.core.sla import Sla, Stage
from gateway.core.workdays import WorkingCalendar
from gateway.store import AcceptOutcome, CaseQuery, IncomingMessage, Store, sql
from gateway.store.postgres import PostgresConfig, PostgresStore
from gateway.store.sql import Query, Steps
from gateway.store.sqlite import SQLiteConfig, SQLiteStore, run_steps
from mitransfer.v1 import envelope_pb2, tracking_pb2
from tests.support import drop_schema, postgres_url

T0 = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)
T = TypeVar("T")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


Factory = Callable[[], Store]  # another store on the same database (a restart, a second replica)


@contextmanager
def sqlite_store(tmp: Path, clock: Callable[[], dt.datetime]) -> Iterator[Factory]:
    yield lambda: SQLiteStore(SQLiteConfig(path=tmp / "contract.db"), clock)


@contextmanager
def postgres_store(tmp: Path, clock: Callable[[], dt.datetime]) -> Iterator[Factory]:
    """Stores in a schema of their own on the test server, dropped afterwards."""
    url, schema = postgres_url(), f"contract_{uuid.uuid4().hex[:12]}"
    try:
        yield lambda: PostgresStore(PostgresConfig(url=url, schema=schema), clock)
    finally:
        drop_schema(url, schema)


STORES = {"sqlite": sqlite_store, "postgresql": postgres_store}


@pytest.fixture(params=sorted(STORES))
async def factory_and_clock(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Factory, Clock]]:
    clock = Clock()
    with STORES[request.param](tmp_path, clock) as make:
        yield make, clock


@pytest.fixture
async def store_and_clock(factory_and_clock: tuple[Factory, Clock]) -> AsyncIterator[tuple[Store, Clock]]:
    make, clock = factory_and_clock
    store = make()
    await store.open()
    yield store, clock
    await store.close()


def incoming(transfer_id: str, *, kind: int = envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE,
             body: bytes = b"notice", message_id: str | None = None, receiver_platform: str = "zhejiang",
             sender: str = "320100", receiver: str = "330100", amount: int = 0) -> IncomingMessage:
    return IncomingMessage(
        message_id=message_id or str(uuid.uuid4()), transfer_id=transfer_id, kind=kind, sender=sender,
        receiver=receiver, deliveries=((receiver_platform, receiver),), created_at=T0,
        fingerprint=hashlib.sha256(body).digest(), signed_message=body, fund_amount_fen=amount,
    )


def opened(m: IncomingMessage, person: bytes | None = None) -> Case:
    return Case(transfer_id=m.transfer_id, state=tracking_pb2.CASE_STATE_OUTBOUND_ACCEPTED, outbound=m.sender,
                inbound=m.receiver, applicant=m.sender, insurance_type=310,
                person_key=person or m.transfer_id.encode(), suspension_date="2026-11-01",
                messages={m.message_id: MessageRef(m.kind, Side.OUTBOUND)})


def same(case: Case | None, _index: CaseIndex) -> Decision:
    assert case is not None
    return Decision(case)


def opening(m: IncomingMessage) -> Callable[[Case | None, CaseIndex], Decision]:
    return lambda case, _index: Decision(case or opened(m))


def receipt_for(m: IncomingMessage) -> Callable[[int, dt.datetime], bytes]:
    return lambda seq, at: f"receipt:{m.message_id}:{seq}:{at.isoformat()}".encode()


async def open_case(store: Store) -> IncomingMessage:
    m = incoming(str(uuid.uuid4()))
    await store.accept(m, opening(m), receipt_for(m))
    return m


async def test_accept_stores_message_case_and_delivery(store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    m = incoming(str(uuid.uuid4()))
    outcome = await store.accept(m, opening(m), receipt_for(m))
    assert not outcome.replayed
    assert outcome.receipt == receipt_for(m)(outcome.sequence, T0)
    view = await store.get_case(m.transfer_id)
    assert view is not None
    assert view.case.state == tracking_pb2.CASE_STATE_OUTBOUND_ACCEPTED
    assert [v.message_id for v in view.messages] == [m.message_id]
    assert view.messages[0].delivery_state == tracking_pb2.DELIVERY_STATE_PENDING


async def test_sequences_increase_and_decide_sees_committed_case(store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    first = await open_case(store)
    seen: list[Case | None] = []
    table = incoming(first.transfer_id, kind=envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE, body=b"table")

    def decide(case: Case | None, _index: CaseIndex) -> Decision:
        seen.append(case)
        assert case is not None
        return Decision(replace(case, state=tracking_pb2.CASE_STATE_TABLE_SENT, balance_fen=500))

    out = await store.accept(table, decide, receipt_for(table))
    assert seen[0] is not None and first.message_id in seen[0].messages
    view = await store.get_case(first.transfer_id)
    assert view is not None and view.case.balance_fen == 500
    assert [v.sequence for v in view.messages] == sorted(v.sequence for v in view.messages)
    assert out.sequence == view.messages[-1].sequence


async def test_replay_returns_original_receipt_and_writes_nothing(store_and_clock: tuple[Store, Clock]) -> None:
    store, clock = store_and_clock
    m = incoming(str(uuid.uuid4()))
    first = await store.accept(m, opening(m), receipt_for(m))
    clock.advance(60)
    calls: list[object] = []
    again = await store.accept(m, lambda case, _i: calls.append(case) or Decision(opened(m)), receipt_for(m))
    assert again.replayed and again.receipt == first.receipt and again.sequence == first.sequence
    assert calls == []  # a replay is answered before the case is consulted


async def test_same_id_other_bytes_is_a_conflict(store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    m = await open_case(store)
    forged = replace(m, fingerprint=hashlib.sha256(b"other").digest())
    with pytest.raises(IdempotencyConflict):
        await store.accept(forged, opening(forged), receipt_for(forged))


async def test_refused_decision_leaves_nothing_behind(store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    m = await open_case(store)
    table = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE, body=b"t")

    def refuse(case: Case | None, _index: CaseIndex) -> Decision:
        raise RuleViolation("no", reason="TEST_RULE")

    with pytest.raises(RuleViolation):
        await store.accept(table, refuse, receipt_for(table))
    view = await store.get_case(m.transfer_id)
    assert view is not None and [v.message_id for v in view.messages] == [m.message_id]
    # The refused message's id stays free for a correct message.
    ok = await store.accept(table, same, receipt_for(table))
    assert not ok.replayed


async def test_one_fund_movement_per_case_even_if_decide_allows_two(store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    m = await open_case(store)
    fund = envelope_pb2.MESSAGE_KIND_FUND_TRANSFER
    a = incoming(m.transfer_id, kind=fund, body=b"fund-a", amount=100)
    b = incoming(m.transfer_id, kind=fund, body=b"fund-b", amount=100)
    sent = lambda case, _i: Decision(case, fund_status=FundStatus.SENT)  # noqa: E731
    await store.accept(a, sent, receipt_for(a))
    with pytest.raises(RuleViolation):
        await store.accept(b, sent, receipt_for(b))
    view = await store.get_case(m.transfer_id)
    assert view is not None and b.message_id not in {v.message_id for v in view.messages}


async def test_a_failure_after_writing_undoes_only_its_own_message(store_and_clock: tuple[Store, Clock]) -> None:
    """Accepts committed together (SQLite's group commit) stand or fall alone: one that fails
    after its case row and log head were written leaves nothing, the others keep their places."""
    store, _ = store_and_clock
    openings = [incoming(str(uuid.uuid4())) for _ in range(24)]
    doomed = openings[11]

    def no_receipt(_sequence: int, _at: dt.datetime) -> bytes:
        raise RuntimeError("signer unavailable")

    results = await asyncio.gather(
        *(store.accept(m, opening(m), no_receipt if m is doomed else receipt_for(m)) for m in openings),
        return_exceptions=True)
    assert isinstance(results[11], RuntimeError)
    kept = [r for r in results if isinstance(r, AcceptOutcome)]
    assert len(kept) == len(openings) - 1
    assert sorted(r.sequence for r in kept) == list(range(1, len(openings)))  # no gap where it failed
    assert await store.get_case(doomed.transfer_id) is None
    assert await store.receipt_of(doomed.message_id) is None
    for m in openings:
        if m is not doomed:
            assert await store.receipt_of(m.message_id) is not None


async def test_concurrent_accepts_are_decided_one_after_another(store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    m = await open_case(store)

    def only_once(case: Case | None, _index: CaseIndex) -> Decision:
        assert case is not None
        if case.fund_message_id is not None:
            raise RuleViolation("already", reason="FUND_TRANSFER_ALREADY_ACCEPTED")
        return Decision(replace(case, fund_message_id="x"), fund_status=FundStatus.SENT)

    racers = [incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_FUND_TRANSFER, body=f"f{i}".encode(),
                       amount=100) for i in range(32)]
    results = await asyncio.gather(*(store.accept(r, only_once, receipt_for(r)) for r in racers),
                                   return_exceptions=True)
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 1
    assert all(isinstance(r, RuleViolation) for r in results if isinstance(r, BaseException))


async def test_deliveries_in_order_per_case_with_redelivery_and_dead_letter(
    store_and_clock: tuple[Store, Clock],
) -> None:
    store, clock = store_and_clock
    m = await open_case(store)
    second = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE, body=b"t2")
    await store.accept(second, same, receipt_for(second))
    lease = dt.timedelta(seconds=30)

    def claim() -> object:
        return store.claim_deliveries("zhejiang", None, limit=10, lease=lease, max_attempts=2, now=clock())

    got = await claim()  # type: ignore[misc]
    assert [d.message_id for d in got] == [m.message_id]  # the second waits behind the first
    assert await claim() == []  # leased: not handed out twice
    clock.advance(31)
    again = await claim()  # type: ignore[misc]
    assert [(d.message_id, d.attempt) for d in again] == [(m.message_id, 2)]
    clock.advance(31)
    assert await claim() == []  # two attempts used up: dead letter ...
    stats = {s.platform: s for s in await store.delivery_stats()}
    assert stats["zhejiang"].dead_letters == 1
    after = await claim()  # type: ignore[misc]
    assert [d.message_id for d in after] == [second.message_id]  # ... and the case moves on
    await store.ack_delivery("zhejiang", second.message_id, clock())
    await store.ack_delivery("zhejiang", second.message_id, clock())  # idempotent
    stats = {s.platform: s for s in await store.delivery_stats()}
    assert stats["zhejiang"].pending == 0 and stats["zhejiang"].in_flight == 0


async def test_ack_by_another_platform_is_not_found(store_and_clock: tuple[Store, Clock]) -> None:
    store, clock = store_and_clock
    m = await open_case(store)
    with pytest.raises(NotFound):
        await store.ack_delivery("jiangsu", m.message_id, clock())
    with pytest.raises(NotFound):
        await store.ack_delivery("zhejiang", str(uuid.uuid4()), clock())


async def test_agency_filter_limits_claims(store_and_clock: tuple[Store, Clock]) -> None:
    store, clock = store_and_clock
    m = await open_case(store)
    lease = dt.timedelta(seconds=30)
    assert await store.claim_deliveries("zhejiang", frozenset({"330200"}), limit=10, lease=lease,
                                        max_attempts=3, now=clock()) == []
    got = await store.claim_deliveries("zhejiang", frozenset({"330100"}), limit=10, lease=lease,
                                       max_attempts=3, now=clock())
    assert [d.message_id for d in got] == [m.message_id]


async def test_survives_reopen(factory_and_clock: tuple[Factory, Clock]) -> None:
    make, _ = factory_and_clock
    store = make()
    await store.open()
    m = await open_case(store)
    await store.close()
    store = make()
    await store.open()  # migrations find the schema current
    again = await store.accept(m, opening(m), receipt_for(m))
    assert again.replayed
    await store.close()


async def test_two_postgresql_stores_racing_move_each_case_once(tmp_path: Path) -> None:
    """Two replicas on one database: rival fund transfers of one case, sent to both at once,
    and the same message sent to both at once, still make one movement and one log entry."""
    clock = Clock()
    with postgres_store(tmp_path, clock) as make:
        a, b = make(), make()
        await asyncio.gather(a.open(), b.open())  # concurrent migrations serialize themselves
        try:
            cases = [await open_case(a) for _ in range(20)]

            def funds(case: Case | None, _index: CaseIndex) -> Decision:
                return Decision(case or opened(cases[0]), fund_status=FundStatus.SENT)

            outcomes = []
            for c in cases:
                first, rival = (incoming(c.transfer_id, kind=envelope_pb2.MESSAGE_KIND_FUND_TRANSFER, body=body,
                                         amount=500) for body in (b"f1", b"f2"))
                outcomes += await asyncio.gather(
                    a.accept(first, funds, receipt_for(first)), b.accept(rival, funds, receipt_for(rival)),
                    b.accept(first, funds, receipt_for(first)), return_exceptions=True)
            accepted = [o for o in outcomes if isinstance(o, AcceptOutcome) and not o.replayed]
            assert len(accepted) == len(cases)  # one per case; every other answer a refusal or a replay
            assert all(isinstance(o, AcceptOutcome | RuleViolation) for o in outcomes), outcomes
            lines = await a.settlement(T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=1))
            assert sum(line.transfers for line in lines) == len(cases)
            assert sum(line.sent_fen for line in lines) == 500 * len(cases)
            sequences = sorted(o.sequence for o in outcomes if isinstance(o, AcceptOutcome))
            assert len(set(sequences)) == len(accepted)  # replays carry the original sequence
        finally:
            await asyncio.gather(a.close(), b.close())


async def test_held_delivery_waits_for_release_and_blocks_the_case(store_and_clock: tuple[Store, Clock]) -> None:
    store, clock = store_and_clock
    m = await open_case(store)
    lease = dt.timedelta(seconds=30)
    await store.claim_deliveries("zhejiang", None, limit=10, lease=lease, max_attempts=3, now=clock())
    await store.ack_delivery("zhejiang", m.message_id, clock())
    fund = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_FUND_TRANSFER, body=b"big", amount=2_000_000)
    await store.accept(fund, lambda case, _i: Decision(case, hold_delivery=True, fund_status=FundStatus.HELD),
                       receipt_for(fund))
    later = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_ACKNOWLEDGEMENT, body=b"later")
    await store.accept(later, same, receipt_for(later))
    assert await store.claim_deliveries("zhejiang", None, limit=10, lease=lease, max_attempts=3, now=clock()) == []
    held = await store.held_transfers()
    assert [(h.transfer_id, h.amount_fen) for h in held] == [(m.transfer_id, 2_000_000)]
    with pytest.raises(NotFound):  # nothing to acknowledge while held
        await store.ack_delivery("zhejiang", fund.message_id, clock())
    decision = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_REVIEW_DECISION, body=b"approve")
    await store.accept(decision, lambda case, _i: Decision(case, release_message=fund.message_id,
                                                           fund_status=FundStatus.SENT), receipt_for(decision))
    got = await store.claim_deliveries("zhejiang", None, limit=10, lease=lease, max_attempts=3, now=clock())
    assert [d.message_id for d in got] == [fund.message_id]  # released, and first of what remains
    assert await store.held_transfers() == []


async def test_settlement_adds_up_per_province_pair(store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    statuses = [FundStatus.SENT, FundStatus.HELD, FundStatus.SENT, FundStatus.SENT]
    for i, status in enumerate(statuses):
        m = await open_case(store)
        fund = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_FUND_TRANSFER, body=f"f{i}".encode(),
                        amount=100 * (i + 1))
        await store.accept(fund, lambda case, _i, s=status: Decision(case, fund_status=s), receipt_for(fund))
        if i == 2:
            credit = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_ACKNOWLEDGEMENT, body=b"c")
            await store.accept(credit, lambda case, _i: Decision(case, fund_status=FundStatus.CREDITED),
                               receipt_for(credit))
    lines = await store.settlement(T0 - dt.timedelta(hours=1), T0 + dt.timedelta(hours=1))
    assert len(lines) == 1
    line = lines[0]
    assert (line.outbound_province, line.inbound_province, line.transfers) == ("32", "33", 4)
    assert line.sent_fen == 100 + 200 + 300 + 400
    assert (line.held_fen, line.credited_fen, line.in_flight_fen, line.rejected_fen) == (200, 300, 500, 0)
    assert await store.settlement(T0 + dt.timedelta(hours=1), T0 + dt.timedelta(hours=2)) == []
    assert await store.fund_totals() == lines  # kept by each accept, the same as adding up every movement


async def test_fund_totals_are_added_up_from_the_movements_stored_before_them(tmp_path: Path) -> None:
    """A database from before the running totals gets them from its movements when it upgrades."""
    clock = Clock()
    path = tmp_path / "upgrade.db"
    store = SQLiteStore(SQLiteConfig(path=path), clock)
    await store.open()
    try:
        for i, status in enumerate([FundStatus.SENT, FundStatus.HELD, FundStatus.CREDITED]):
            m = await open_case(store)
            fund = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_FUND_TRANSFER, body=f"f{i}".encode(),
                            amount=100 * (i + 1))
            await store.accept(fund, lambda case, _i, s=status: Decision(case, fund_status=s), receipt_for(fund))
        kept = await store.fund_totals()
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:  # back to the schema before the totals
        conn.execute("DROP TABLE fund_totals")
        conn.execute("DELETE FROM schema_version WHERE version > 2")
    store = SQLiteStore(SQLiteConfig(path=path), clock)
    await store.open()
    try:
        upgraded = await store.fund_totals()
        everything = await store.settlement(T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=1))
    finally:
        await store.close()
    assert upgraded == kept == everything and len(everything) == 1
    assert (everything[0].transfers, everything[0].sent_fen, everything[0].held_fen) == (3, 600, 200)


async def test_index_sees_open_cases_and_schema_allows_one(store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    first = incoming(str(uuid.uuid4()))
    await store.accept(first, lambda case, _i: Decision(opened(first, person=b"same-person")), receipt_for(first))
    seen: dict[str, str | None] = {}  # decide is pure: a store may run it more than once
    second = incoming(str(uuid.uuid4()), body=b"second")

    def look(case: Case | None, index: CaseIndex) -> Decision:
        seen["320100"] = index.open_case_for(b"same-person", "320100")
        seen["320500"] = index.open_case_for(b"same-person", "320500")
        return Decision(opened(second, person=b"same-person"))

    with pytest.raises(RuleViolation) as refused:  # the partial unique index refuses a second open case
        await store.accept(second, look, receipt_for(second))
    assert refused.value.reason == "CASE_ALREADY_OPEN"  # in the rule's words, whichever engine
    assert seen == {"320100": first.transfer_id, "320500": None}


async def test_stages_start_and_finish_with_the_case(store_and_clock: tuple[Store, Clock]) -> None:
    store, clock = store_and_clock
    m = await open_case(store)
    view = await store.get_case(m.transfer_id)
    assert view is not None
    calendar = Sla(WorkingCalendar()).calendar
    assert {s.stage: (s.started_at, s.deadline, s.finished_at) for s in view.stages} == {
        Stage.OUTBOUND: (T0, calendar.deadline(T0, 10), None), Stage.TOTAL: (T0, calendar.deadline(T0, 15), None)}
    clock.advance(3600)
    table = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE, body=b"table")

    def sent(case: Case | None, _index: CaseIndex) -> Decision:
        assert case is not None
        return Decision(replace(case, state=tracking_pb2.CASE_STATE_TABLE_SENT, balance_fen=0))

    outcome = await store.accept(table, sent, receipt_for(table))
    later = T0 + dt.timedelta(hours=1)
    assert [(s.stage, s.started_at, s.finished_at) for s in outcome.finished_stages] == [(Stage.OUTBOUND, T0, later)]
    assert (outcome.outbound, outcome.inbound) == ("320100", "330100")
    view = await store.get_case(m.transfer_id)
    assert view is not None
    assert [(s.stage, s.finished_at) for s in view.stages] == [
        (Stage.OUTBOUND, later), (Stage.TOTAL, None), (Stage.INBOUND, None)]
    replayed = await store.accept(table, sent, receipt_for(table))
    assert replayed.replayed and replayed.finished_stages == ()


async def test_stage_counts_and_case_queries(store_and_clock: tuple[Store, Clock]) -> None:
    store, clock = store_and_clock
    early = [await open_case(store) for _ in range(3)]
    clock.advance(20 * 86400)  # past the outbound limit of the first three
    late = incoming(str(uuid.uuid4()), sender="320500", receiver="340100", receiver_platform="anhui")
    await store.accept(late, opening(late), receipt_for(late))
    now = clock.now
    counts = {(c.stage, c.outbound_province, c.inbound_province): (c.open, c.overdue, c.due_soon)
              for c in await store.stage_counts(now, now + dt.timedelta(days=1))}
    assert counts[(Stage.OUTBOUND, "32", "33")] == (3, 3, 0)
    assert counts[(Stage.OUTBOUND, "32", "34")] == (1, 0, 0)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    overdue = await store.list_cases(CaseQuery(deadline_between=(epoch, now)))
    assert {v.case.transfer_id for v in overdue} == {m.transfer_id for m in early}
    assert all(v.stages and not v.messages for v in overdue)
    everything = [v.case.transfer_id for v in await store.list_cases(CaseQuery())]
    assert everything[-1] == late.transfer_id and len(everything) == 4
    first_page = await store.list_cases(CaseQuery(limit=2))
    rest = await store.list_cases(CaseQuery(after=(first_page[-1].opened_at, first_page[-1].case.transfer_id)))
    assert [v.case.transfer_id for v in first_page + rest] == everything
    assert [v.case.transfer_id for v in await store.list_cases(CaseQuery(agencies=frozenset({"340100"})))] == [
        late.transfer_id]
    assert [v.case.transfer_id for v in await store.list_cases(CaseQuery(inbound_province="34"))] == [
        late.transfer_id]
    assert len(await store.list_cases(CaseQuery(opened_before=T0 + dt.timedelta(days=1)))) == 3
    assert not await store.list_cases(CaseQuery(states=frozenset({tracking_pb2.CASE_STATE_COMPLETED})))


def _counting(steps: Steps[T], queries: list[Query]) -> Steps[T]:
    """`steps`, noting every query it asks for."""
    result: Any = None
    while True:
        try:
            query = steps.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        queries.append(query)
        result = yield query


async def test_case_views_are_read_in_three_queries_however_many_cases(tmp_path: Path) -> None:
    clock = Clock()
    store = SQLiteStore(SQLiteConfig(path=tmp_path / "views.db"), clock)
    await store.open()
    try:
        def sent(case: Case | None, _index: CaseIndex) -> Decision:
            assert case is not None
            return Decision(replace(case, state=tracking_pb2.CASE_STATE_TABLE_SENT, balance_fen=0))

        cases = [await open_case(store) for _ in range(12)]
        for m in cases[::3]:  # a second message, and a stage finished, in some of them
            clock.advance(60)
            table = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE,
                             body=m.message_id.encode())
            await store.accept(table, sent, receipt_for(table))
        undelivered = replace(incoming(cases[1].transfer_id, body=b"to no platform"), deliveries=())
        await store.accept(undelivered, same, receipt_for(undelivered))  # the case's, but no MessageView
        one_by_one = [await store.get_case(m.transfer_id) for m in cases]
    finally:
        await store.close()

    with sqlite3.connect(tmp_path / "views.db") as conn:
        listed_queries: list[Query] = []
        listed = run_steps(conn, _counting(sql.list_cases(CaseQuery()), listed_queries))
        idle_queries: list[Query] = []
        idle = run_steps(conn, _counting(sql.idle_cases(tracking_pb2.CASE_STATE_OUTBOUND_ACCEPTED,
                                                        clock.now + dt.timedelta(days=1), 100), idle_queries))
    assert len(listed_queries) == len(idle_queries) == 3
    views = sorted((v for v in one_by_one if v is not None), key=lambda v: (v.opened_at, v.case.transfer_id))
    assert [(v.case, v.stages) for v in listed] == [(v.case, v.stages) for v in views]  # in the listing's order
    assert all(not v.messages for v in listed)
    untouched = [v for v in views if v.case.state == tracking_pb2.CASE_STATE_OUTBOUND_ACCEPTED]
    assert sorted(idle, key=lambda v: v.case.transfer_id) == sorted(untouched, key=lambda v: v.case.transfer_id)
    assert len(idle) == 8 and sum(len(v.messages) for v in views) == 16
    assert sum(len(v.case.messages) for v in views) == 17


async def test_a_case_from_before_stages_were_kept_still_moves(tmp_path: Path) -> None:
    """A database upgraded from the first schema holds open cases without stage rows: a message
    that would finish one of their stages is accepted, not refused."""
    clock = Clock()
    store = SQLiteStore(SQLiteConfig(path=tmp_path / "old.db"), clock)
    await store.open()
    try:
        m = await open_case(store)
        with sqlite3.connect(tmp_path / "old.db") as conn:  # as if opened before migration 2
            conn.execute("DELETE FROM case_stages WHERE transfer_id = ?", (m.transfer_id,))
        table = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE, body=b"table")

        def sent(case: Case | None, _index: CaseIndex) -> Decision:
            assert case is not None
            return Decision(replace(case, state=tracking_pb2.CASE_STATE_TABLE_SENT, balance_fen=0))

        outcome = await store.accept(table, sent, receipt_for(table))
        assert not outcome.replayed and outcome.finished_stages == ()
        view = await store.get_case(m.transfer_id)
        assert view is not None and [s.stage for s in view.stages] == [Stage.INBOUND]
    finally:
        await store.close()


async def test_sqlite_disk_full_mid_batch_leaves_no_half_committed_accepts(tmp_path: Path) -> None:
    """When SQLite itself rolls a batch's transaction back (disk full here), no later job of the
    batch may run on in autocommit: every caller that hears of a failure finds nothing stored."""
    store = SQLiteStore(SQLiteConfig(path=tmp_path / "full.db"), Clock())
    await store.open()
    try:
        for _ in range(5):
            await open_case(store)
        pages = await store._submit(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
        await store._submit(lambda conn: conn.execute(f"PRAGMA max_page_count = {pages}"))
        # Alternately a case whose first row needs new pages (a huge person key) and a small one
        # that fits in the pages there are.
        openings = [incoming(str(uuid.uuid4())) for _ in range(16)]

        def decide_for(i: int, m: IncomingMessage) -> Callable[[Case | None, CaseIndex], Decision]:
            person = b"p" * 6000 + m.transfer_id.encode() if i % 2 == 0 else None
            return lambda case, _index: Decision(case or opened(m, person))

        results = await asyncio.gather(
            *(store.accept(m, decide_for(i, m), receipt_for(m)) for i, m in enumerate(openings)),
            return_exceptions=True)
        assert any(isinstance(r, BaseException) for r in results)
        for m, result in zip(openings, results, strict=True):
            stored = await store.get_case(m.transfer_id)
            assert (stored is None) == isinstance(result, BaseException), result
    finally:
        await store.close()



async def test_sqlite_store_creates_its_folder(tmp_path: Path) -> None:
    """`transfer-gateway migrate` on a fresh checkout opens the store before anything made var/."""
    store = SQLiteStore(SQLiteConfig(path=tmp_path / "var" / "deeper" / "gateway.db"), Clock())
    await store.open()
    try:
        m = await open_case(store)
        assert await store.get_case(m.transfer_id) is not None
    finally:
        await store.close()

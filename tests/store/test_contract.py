"""The storage contract: every Store implementation must pass this suite, through the port alone.

Each test runs once per engine (tests/store/conftest.py); add an engine to
`tests.store.support.ENGINES` and it runs the same tests. What only one engine can show lives in
test_sqlite.py and test_postgres.py; what the SQL operations do below the port, in test_steps.py
and test_migrations.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import replace

import pytest

from gateway.core.case import Case, CaseIndex, Decision, FundStatus
from gateway.core.errors import IdempotencyConflict, NotFound, RuleViolation, StoreUnavailable
from gateway.core.sla import Owner, Stage, Timeliness
from gateway.core.workdays import CHINA, WorkingCalendar, start_of, year_notice
from gateway.store import (
    AcceptOutcome,
    CaseQuery,
    Escalation,
    HeldQuery,
    IncomingMessage,
    IssuedReceipt,
    Retimed,
    StageTotal,
    Store,
    UnaskedQuestion,
)
from mitransfer.protocol import entries, tlog
from mitransfer.v1 import envelope_pb2, tracking_pb2
from tests.store.support import (
    SLA,
    T0,
    Clock,
    Factory,
    incoming,
    named,
    open_case,
    opened,
    opening,
    receipt_for,
    same,
)


async def test_accept_stores_message_case_and_delivery(store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    m = incoming(str(uuid.uuid4()))
    outcome = await store.accept(m, opening(m), receipt_for(m))
    assert not outcome.replayed
    assert outcome.receipt == receipt_for(m)(outcome.sequence, 0, T0).receipt
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

    def no_receipt(_sequence: int, _leaf: int, _at: dt.datetime) -> IssuedReceipt:
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

    async def claim() -> list[tuple[str, int]]:
        got = await store.claim_deliveries("zhejiang", None, limit=10, lease=lease, max_attempts=2, now=clock())
        return [(d.message_id, d.attempt) for d in got.deliveries]

    assert await claim() == [(m.message_id, 1)]  # the second waits behind the first
    assert await claim() == []  # leased: not handed out twice
    clock.advance(31)
    assert await claim() == [(m.message_id, 2)]
    clock.advance(31)
    dead = await store.claim_deliveries("zhejiang", None, limit=10, lease=lease, max_attempts=2, now=clock())
    assert dead.deliveries == []  # two attempts used up: dead letter ...
    assert [(d.message_id, d.attempts, d.reason) for d in dead.dead_lettered] == [(m.message_id, 2, "UNACKNOWLEDGED")]
    stats = {s.platform: s for s in await store.delivery_stats()}
    assert stats["zhejiang"].dead_letters == 1
    assert await claim() == []  # ... which holds back the case's later deliveries
    assert await store.redrive("zhejiang", None, clock()) == 1
    assert await claim() == [(m.message_id, 1)]  # back in the queue, its attempts anew
    await store.ack_delivery("zhejiang", m.message_id, clock())
    assert await claim() == [(second.message_id, 1)]  # and the case moves on
    await store.ack_delivery("zhejiang", second.message_id, clock())
    await store.ack_delivery("zhejiang", second.message_id, clock())  # idempotent
    assert [s for s in await store.delivery_stats() if s.platform == "zhejiang"] == []  # none waits, none dead


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
    none = await store.claim_deliveries("zhejiang", frozenset({"330200"}), limit=10, lease=lease,
                                        max_attempts=3, now=clock())
    assert none.deliveries == []
    got = await store.claim_deliveries("zhejiang", frozenset({"330100"}), limit=10, lease=lease,
                                       max_attempts=3, now=clock())
    assert [(d.message_id, d.receiver) for d in got.deliveries] == [(m.message_id, "330100")]


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
    none = await store.claim_deliveries("zhejiang", None, limit=10, lease=lease, max_attempts=3, now=clock())
    assert none.deliveries == []
    held = await store.held_transfers(HeldQuery())
    assert [(h.transfer_id, h.amount_fen) for h in held] == [(m.transfer_id, 2_000_000)]
    with pytest.raises(NotFound):  # nothing to acknowledge while held
        await store.ack_delivery("zhejiang", fund.message_id, clock())
    decision = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_REVIEW_DECISION, body=b"approve")
    await store.accept(decision, lambda case, _i: Decision(case, release_message=fund.message_id,
                                                           fund_status=FundStatus.SENT), receipt_for(decision))
    got = await store.claim_deliveries("zhejiang", None, limit=10, lease=lease, max_attempts=3, now=clock())
    assert [d.message_id for d in got.deliveries] == [fund.message_id]  # released, and first of what remains
    assert await store.held_transfers(HeldQuery()) == []


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


async def test_index_answers_the_question_a_message_names_and_schema_allows_one(
    store_and_clock: tuple[Store, Clock],
) -> None:
    store, _ = store_and_clock
    first = incoming(str(uuid.uuid4()), opens_case_of=(named(b"same-person"), "320100"))
    asked: list[str | None] = []

    def opens(m: IncomingMessage) -> Callable[[Case | None, CaseIndex], Decision]:
        def decide(case: Case | None, index: CaseIndex) -> Decision:
            asked.append(index.open_case_for(named(b"same-person"), "320100"))
            return Decision(opened(m, person=b"same-person"))  # opens it whatever the answer
        return decide

    await store.accept(first, opens(first), receipt_for(first))
    assert asked == [None]  # no open case yet: the decision ran once, with the answer at hand
    second = incoming(str(uuid.uuid4()), body=b"second", opens_case_of=(named(b"same-person"), "320100"))
    with pytest.raises(RuleViolation) as refused:  # the partial unique index refuses a second open case
        await store.accept(second, opens(second), receipt_for(second))
    assert refused.value.reason == "CASE_ALREADY_OPEN"  # in the rule's words, whichever engine
    assert asked == [None, first.transfer_id]
    elsewhere = incoming(str(uuid.uuid4()), body=b"elsewhere", sender="320500",
                         opens_case_of=(named(b"same-person"), "320500"))

    def at_320500(case: Case | None, index: CaseIndex) -> Decision:
        asked.append(index.open_case_for(named(b"same-person"), "320500"))
        return Decision(opened(elsewhere, person=b"same-person"))

    await store.accept(elsewhere, at_320500, receipt_for(elsewhere))  # another outbound agency: allowed
    assert asked == [None, first.transfer_id, None]


async def test_a_question_the_message_did_not_name_is_refused_not_guessed(
    store_and_clock: tuple[Store, Clock],
) -> None:
    store, _ = store_and_clock
    m = incoming(str(uuid.uuid4()), opens_case_of=(named(b"person"), "320100"))

    def asks_another(case: Case | None, index: CaseIndex) -> Decision:
        index.open_case_for(named(b"person"), "320500")
        return Decision(opened(m, person=b"person"))

    with pytest.raises(UnaskedQuestion):
        await store.accept(m, asks_another, receipt_for(m))
    assert await store.get_case(m.transfer_id) is None
    ok = await store.accept(m, opening(m), receipt_for(m))  # nothing was left behind
    assert not ok.replayed


async def test_the_decision_runs_once_per_message(store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    calls: list[str] = []

    def counted(decide: Callable[[Case | None, CaseIndex], Decision], name: str
                ) -> Callable[[Case | None, CaseIndex], Decision]:
        def run(case: Case | None, index: CaseIndex) -> Decision:
            calls.append(name)
            return decide(case, index)
        return run

    m = incoming(str(uuid.uuid4()), opens_case_of=(named(b"once"), "320100"))
    await store.accept(m, counted(opening(m), "opening"), receipt_for(m))
    table = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE, body=b"table",
                     opens_case_of=(named(b"once"), "320100"))  # named, but its case exists: nothing to ask
    await store.accept(table, counted(same, "usual"), receipt_for(table))
    await store.accept(table, counted(same, "replay"), receipt_for(table))
    assert calls == ["opening", "usual"]  # a replay is answered before any decision


async def test_stages_start_and_finish_with_the_case(store_and_clock: tuple[Store, Clock]) -> None:
    store, clock = store_and_clock
    m = await open_case(store)
    view = await store.get_case(m.transfer_id)
    assert view is not None
    calendar = SLA.calendar
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




async def test_a_decision_that_repeats_an_earlier_message_answers_with_its_receipt(
        store_and_clock: tuple[Store, Clock]) -> None:
    """Two identical review decisions: the second's decision names the first (`replay_of`), and the
    store answers with the first's receipt and sequence, writing nothing."""
    store, clock = store_and_clock
    m = await open_case(store)
    first = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_REVIEW_DECISION, body=b"approve-1",
                     sender="gateway", receiver="*")
    decided = await store.accept(first, same, receipt_for(first))
    clock.advance(5)
    again = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_REVIEW_DECISION, body=b"approve-2",
                     sender="gateway", receiver="*")
    outcome = await store.accept(again, lambda case, _i: Decision(case, replay_of=first.message_id),  # type: ignore[arg-type]
                                 receipt_for(again))
    assert (outcome.replayed, outcome.receipt, outcome.sequence) == (True, decided.receipt, decided.sequence)
    view = await store.get_case(m.transfer_id)
    assert view is not None and again.message_id not in view.case.messages
    assert await store.receipt_of(again.message_id) is None


def _table_sent(case: Case | None, _index: CaseIndex) -> Decision:
    assert case is not None
    return Decision(replace(case, state=tracking_pb2.CASE_STATE_TABLE_SENT, balance_fen=0))


async def test_stages_keep_their_owner_and_the_totals_their_results(store_and_clock: tuple[Store, Clock]) -> None:
    store, clock = store_and_clock
    m = await open_case(store)
    clock.advance(30 * 86400)  # past the outbound limit: the table comes late
    table = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE, body=b"table")
    outcome = await store.accept(table, _table_sent, receipt_for(table))
    assert [(s.stage, s.owner) for s in outcome.finished_stages] == [(Stage.OUTBOUND, Owner.OUTBOUND)]
    assert await store.stage_totals() == [
        StageTotal(Stage.OUTBOUND, Owner.OUTBOUND, "32", "32", "33", Timeliness.LATE, 1)]
    now = clock.now
    counts = {c.stage: (c.owner, c.owner_province, c.open) for c in await store.stage_counts(now, now)}
    assert counts == {Stage.INBOUND: (Owner.INBOUND, "33", 1), Stage.TOTAL: (Owner.BOTH, "", 1)}
    view = await store.get_case(m.transfer_id)
    assert view is not None and {s.stage: s.owner for s in view.stages} == {
        Stage.OUTBOUND: Owner.OUTBOUND, Stage.INBOUND: Owner.INBOUND, Stage.TOTAL: Owner.BOTH}
    clock.advance(30 * 86400)  # the inbound and total stages pass their deadlines too
    epoch, later = dt.datetime(1970, 1, 1, tzinfo=dt.UTC), clock.now
    for owner, found in ((Owner.INBOUND, [m.transfer_id]), (Owner.OUTBOUND, []), (Owner.BOTH, [m.transfer_id])):
        listed = await store.list_cases(CaseQuery(deadline_between=(epoch, later), owner=owner))
        assert [v.case.transfer_id for v in listed] == found, owner


async def test_a_loaded_notice_counts_stages_again_and_judges_finished_ones_again(
        store_and_clock: tuple[Store, Clock]) -> None:
    """Begun 2026-12-24 while 2027 has no official calendar: ten working days end 2027-01-07
    (provisional). The table comes on 2027-01-08: late on the fallback. A 2027 notice making
    2027-01-01 a holiday moves the deadline a working day on, and the finished stage is judged
    again: on time, in the totals too. Counting again changes nothing the second time."""
    store, clock = store_and_clock
    clock.now = dt.datetime(2026, 12, 24, 15, tzinfo=CHINA)
    m = await open_case(store)
    clock.now = dt.datetime(2027, 1, 8, 11, tzinfo=CHINA)
    table = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE, body=b"table")
    await store.accept(table, _table_sent, receipt_for(table))
    view = await store.get_case(m.transfer_id)
    assert view is not None
    outbound = next(s for s in view.stages if s.stage is Stage.OUTBOUND)
    assert (outbound.deadline, outbound.provisional) == (start_of(dt.date(2027, 1, 8)), True)
    assert {(t.stage, t.result): t.stages for t in await store.stage_totals()} == {
        (Stage.OUTBOUND, Timeliness.LATE): 1}
    notice = year_notice(2027, [dt.date(2027, 1, 1)], [], "2027 notice (test)")
    version = await store.load_calendar({2027: notice}, clock.now)
    stored = await store.calendar()
    assert version == stored.version == 1 and stored.notices[2027].holidays == {dt.date(2027, 1, 1)}
    assert stored.notices[2027].source == "2027 notice (test)"
    try:
        SLA.use(WorkingCalendar(stored.notices, stored.version))
        assert await store.retime_stages() == Retimed(retimed=3, rejudged=1, now_on_time=1, now_late=0)
        assert await store.retime_stages() == Retimed(0, 0, 0, 0)
    finally:
        SLA.use(WorkingCalendar())
    view = await store.get_case(m.transfer_id)
    assert view is not None
    outbound = next(s for s in view.stages if s.stage is Stage.OUTBOUND)
    assert (outbound.deadline, outbound.provisional) == (start_of(dt.date(2027, 1, 9)), False)
    assert {(t.stage, t.result): t.stages for t in await store.stage_totals() if t.stages} == {
        (Stage.OUTBOUND, Timeliness.ON_TIME): 1}
    assert await store.load_calendar({2027: notice}, clock.now) == 2  # every load raises the version


async def test_requests_left_unanswered_are_escalated(store_and_clock: tuple[Store, Clock]) -> None:
    store, clock = store_and_clock
    request = incoming(str(uuid.uuid4()), kind=envelope_pb2.MESSAGE_KIND_TRANSFER_REQUEST, body=b"request",
                       sender="330100", receiver="320100")

    def lodged(case: Case | None, _index: CaseIndex) -> Decision:
        return Decision(replace(opened(request), state=tracking_pb2.CASE_STATE_OPENED, outbound="320100",
                                inbound="330100", applicant="330100"))

    await store.accept(request, lodged, receipt_for(request))
    answered = await open_case(store)  # a notice: answered at once
    clock.advance(20 * 86400)
    assert answered.transfer_id  # its outbound stage is late too, but it is no unanswered request
    assert await store.escalations(clock.now) == [Escalation("32", "33", 1)]
    assert await store.escalations(T0) == []


# --- the transparency log ---------------------------------------------------------------------------

def _sign(size: int, root: bytes) -> bytes:
    return f"note {size} {root.hex()}\n".encode()


async def test_each_message_and_fund_change_is_a_leaf_and_every_proof_checks(
        store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    assert await store.latest_checkpoint() is None
    assert await store.publish_checkpoint(_sign) is None  # nothing logged, nothing to sign
    m = await open_case(store)
    fund = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_FUND_TRANSFER, body=b"fund", amount=900)
    out = await store.accept(fund, lambda case, _i: Decision(case, fund_status=FundStatus.HELD), receipt_for(fund))
    body = envelope_pb2.ReceiptBody.FromString(envelope_pb2.Receipt.FromString(out.receipt).body)
    assert (body.sequence, body.leaf_index) == (2, 1)  # the fund transfer's movement is leaf 2
    first = await store.publish_checkpoint(_sign)
    assert first is not None and first.tree_size == 3 and first.note == _sign(3, first.root_hash)
    assert await store.publish_checkpoint(_sign) is None
    ack = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_ACKNOWLEDGEMENT, body=b"ack", sender="330100",
                   receiver="320100")
    await store.accept(ack, lambda case, _i: Decision(case, fund_status=FundStatus.CREDITED), receipt_for(ack))
    second = await store.publish_checkpoint(_sign)
    assert second is not None and second.tree_size == 5 and await store.latest_checkpoint() == second
    for message, leaf in ((m, 0), (fund, 1), (ack, 3)):
        assert (await store.leaf_of(message.message_id) or (None, None))[:2] == (message.transfer_id, leaf)
        proof = await store.inclusion_proof(message.message_id, 0)
        assert proof.leaf_index == leaf and proof.checkpoint == second
        tlog.check_inclusion(proof.hashes, 5, second.root_hash, leaf, tlog.leaf_hash(proof.entry))
    change = entries.read_entry((await store.inclusion_proof(m.message_id, 3)).entry)
    assert change.message.case_state == tracking_pb2.CASE_STATE_OUTBOUND_ACCEPTED
    consistency = await store.consistency_proof(3, 0)
    tlog.check_consistency(consistency.hashes, 5, second.root_hash, 3, first.root_hash)
    with pytest.raises(RuleViolation) as refused:
        await store.inclusion_proof(ack.message_id, 3)
    assert refused.value.reason == "LEAF_NOT_IN_TREE"
    with pytest.raises(NotFound):
        await store.inclusion_proof("no-such-message", 0)
    with pytest.raises(NotFound):
        await store.consistency_proof(1, 4)  # no checkpoint of size 4
    with pytest.raises(RuleViolation):
        await store.consistency_proof(5, 3)


async def test_the_write_probe_commits_and_fails_when_the_store_cannot_write(
    factory_and_clock: tuple[Factory, Clock],
) -> None:
    """A probe is a committed write: it succeeds on an open store, again and again (one row per
    replica, updated), and raises StoreUnavailable on a store that cannot write."""
    make, _ = factory_and_clock
    store = make()
    await store.open()
    try:
        for replica, at in (("replica-a", T0), ("replica-a", T0 + dt.timedelta(seconds=5)), ("replica-b", T0)):
            await store.probe_write(replica, at)
    finally:
        await store.close()
    with pytest.raises(StoreUnavailable):
        await store.probe_write("replica-a", T0)

"""The schema's migrations: released ones never change, and databases made by older releases open
and upgrade, on both engines."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from dataclasses import replace
from typing import NamedTuple

import pytest

from gateway.core.case import Case, CaseIndex, Decision, FundStatus
from gateway.core.personkeys import PersonKey
from gateway.core.sla import Stage, Timeliness
from gateway.core.timestamps import from_micros, micros
from gateway.store import postgres, sqlite
from gateway.store.migrations import FUND_TOTALS_FROM_MOVEMENTS, MIGRATIONS, ColumnTypes
from gateway.store.port import DeadLetterQuery, DeadReason, LeaseEnd
from gateway.store.steps import Query, QueryOne, Statement, Steps
from mitransfer.protocol import entries, tlog
from mitransfer.v1 import envelope_pb2, tracking_pb2
from tests.store.support import KEYS, SLA, T0, Clock, Factory, incoming, open_case, opened, opening, receipt_for

# SHA-256 of the text each released migration renders to, as the release that shipped it ran it:
# a database that ran a migration never runs it again, so an edit would split the fleet in two.
RELEASED = {
    1: ("b202cda2f33e5bfea57318722b260253f33db9b507afa5b541a26908c4761651",
        "b05c48407a970d843bfd15bfb8482aa3dab5f4ae8e0e35d59f3e47b62bf09dcd"),
    2: ("28ee2bbfd80989ca90eed1296d57d65ae6698ced52b5f232b84ce1797318de02",
        "5ac45ca3fc6859e809106d8718286b4af3a3440462658d54ce263ea4ab513900"),
    3: ("8187c55c618607dc4db580f02899ac298f8fd2e05c93c200143e5bc2f8df10e7",
        "00a7dbdec478281bae0271f4b5e86e2e74318f8d4aee36cb0fe6ea1b3b2c63d8"),
    4: ("69505b3f1c109ae60ebce1e57aac61187402028fb97278d1e984c1fb73c4e893",
        "5b89a3d974f00c72d0be92697d5c0436c7a5f0cb9d9ad1548728ab557c184b1d"),
    5: ("fcfc7bd29bf9f9688853103895ab4ef89768ae3cd1e487d94c1d9e546d9240a6",
        "c57dac0decb5149e68d42ef7c250ac26e8bed38210d13aae58c49cb3c88208df"),
    6: ("e4f9f4c200d1dec5be6e5baac31944d4bd55c0e2e9ecfcf84077d2cce42424b0",
        "23bad92e784b084b5caddcb32d199c0b4ad46a52be116fdcdaa211c6d9c8cb12"),
    7: ("4bf7c1fd7dab8a8d13c4dcbd523b17caf60126869b9e9474a4284368f9410cfc",
        "71277cb7c38c95dbe118d54eee77a5fed55dd1ca07624570c7de0beea0aee105"),
    8: ("1eb7d88e8ad8a17250f70fe59355c133de028c6fa3a35519e2e142c357277c1a",
        "9df765f2785f9ada4ef8623d04941e9c9569883638a4a751619f60ca3e4b7426"),
    9: ("61ec4936814f6e3003aced338585107bc3718f7e1d05a8904b5db61f23eb24dc",
        "cdd21bcaf260295fd52313e6d7e62fdd66a3294570e6cc7604940ced7411d27b"),
}


@pytest.mark.parametrize("version", sorted(RELEASED))
def test_released_migrations_render_as_they_were_released(version: int) -> None:
    for types, pinned in zip((sqlite.TYPES, postgres.TYPES), RELEASED[version], strict=True):
        assert hashlib.sha256(MIGRATIONS[version - 1](types).encode()).hexdigest() == pinned, types


def test_the_types_that_differ_are_the_dialects_words() -> None:
    """SQLite's INTEGER PRIMARY KEY is its row id; PostgreSQL's times need BIGINT: no migration
    names either itself."""
    marked = ColumnTypes(integer="<integer>", blob="<blob>")
    scripts = [migration(marked) for migration in MIGRATIONS]
    assert "sequence        <integer> PRIMARY KEY" in scripts[0] and "person_key      <blob> NOT NULL" in scripts[0]
    for word in ("INTEGER", "BIGINT", "BLOB", "BYTEA"):
        assert not any(word in script for script in scripts), word
    assert "ADD COLUMN retained_fen <integer> NOT NULL DEFAULT 0" in scripts[6]


class _Versions(NamedTuple):
    versions: int
    version: int


def _versions() -> Steps[_Versions | None]:
    return (yield from QueryOne("SELECT COUNT(*) AS versions, MAX(version) AS version FROM schema_version", (),
                                _Versions))


_FUND_MOVEMENTS_3 = """CREATE TABLE fund_movements_3 (
    transfer_id TEXT PRIMARY KEY REFERENCES cases (transfer_id),
    message_id TEXT NOT NULL UNIQUE REFERENCES messages (message_id),
    amount_fen BIGINT NOT NULL CHECK (amount_fen > 0),
    status TEXT NOT NULL CHECK (status IN ('held', 'sent', 'credited', 'rejected')),
    accepted_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)"""


_DELIVERIES_9 = """CREATE TABLE deliveries_9 (
    message_id TEXT NOT NULL REFERENCES messages (message_id), receiver TEXT NOT NULL, platform TEXT NOT NULL,
    transfer_id TEXT NOT NULL, sequence BIGINT NOT NULL, accepted_at BIGINT NOT NULL, state BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0, visible_at BIGINT NOT NULL, first_delivered_at BIGINT,
    acknowledged_at BIGINT, dead_reason TEXT, dead_at BIGINT, PRIMARY KEY (message_id, receiver))"""


def _back_to(version: int) -> Steps[None]:
    """The schema as the release with `version` left it (the tables, columns and indexes added later
    dropped; fund movements back to the statuses of their time)."""
    undo = {11: ["ALTER TABLE cases DROP COLUMN key_id"],
            10: ["DROP INDEX messages_by_case_opening", "ALTER TABLE messages DROP COLUMN case_opened_at",
                 "CREATE INDEX messages_by_case ON messages (transfer_id, sequence)",
                 _DELIVERIES_9,
                 "INSERT INTO deliveries_9 SELECT m.message_id, d.receiver, d.platform, d.transfer_id, d.sequence,"
                 " d.accepted_at, d.state, d.attempts, d.visible_at, d.first_delivered_at, d.acknowledged_at,"
                 " d.dead_reason, d.dead_at FROM deliveries d JOIN messages m ON m.sequence = d.sequence",
                 "DROP TABLE deliveries", "ALTER TABLE deliveries_9 RENAME TO deliveries",
                 "CREATE INDEX deliveries_open ON deliveries (platform, sequence) WHERE state IN (1, 2)",
                 "CREATE INDEX deliveries_unfinished_by_case ON deliveries (platform, transfer_id, sequence)"
                 " WHERE state IN (1, 2, 5, 4)",
                 "CREATE INDEX deliveries_dead ON deliveries (platform) WHERE state = 4",
                 "CREATE INDEX deliveries_held ON deliveries (accepted_at) WHERE state = 5",
                 "CREATE INDEX deliveries_dead_in_order ON deliveries (sequence, receiver) WHERE state = 4"],
            9: ["DROP TABLE write_probes"],
            8: ["DROP INDEX deliveries_dead_in_order", "DROP INDEX deliveries_unfinished_by_case",
                "CREATE INDEX deliveries_open_by_case ON deliveries (platform, transfer_id, sequence)"
                " WHERE state IN (1, 2, 5)",
                "ALTER TABLE deliveries DROP COLUMN dead_at", "ALTER TABLE deliveries DROP COLUMN dead_reason"],
            7: ["DROP INDEX case_stages_to_retime", "DROP TABLE calendar_head", "DROP TABLE calendar_years",
                "DROP TABLE stage_totals",
                *(f"ALTER TABLE cases DROP COLUMN {c}" for c in ("retained_fen", "insured_months",
                                                                 "waiting_period_months")),
                *(f"ALTER TABLE case_stages DROP COLUMN {c}" for c in ("owner", "owner_province", "provisional",
                                                                       "calendar_version")),
                _FUND_MOVEMENTS_3,
                "INSERT INTO fund_movements_3 SELECT transfer_id, message_id, amount_fen, CASE WHEN status IN"
                " ('held', 'sent', 'credited') THEN status ELSE 'rejected' END, accepted_at, updated_at"
                " FROM fund_movements",
                "DROP TABLE fund_movements", "ALTER TABLE fund_movements_3 RENAME TO fund_movements",
                "CREATE INDEX fund_movements_by_day ON fund_movements (accepted_at)"],
            6: ["DROP TABLE registry_documents"],
            5: ["DROP TABLE automatic_cases", "DROP TABLE enrollments", "DROP TABLE suspended_records",
                "DROP TABLE index_messages", "ALTER TABLE cases DROP COLUMN channel"],
            4: ["DROP TABLE log_checkpoints", "DROP TABLE log_tree", "DROP TABLE log_hashes", "DROP TABLE log_entries",
                "ALTER TABLE log_head DROP COLUMN leaves", "ALTER TABLE messages DROP COLUMN leaf_index"],
            3: ["DROP TABLE fund_totals"],
            2: ["DROP TABLE case_stages", "DROP INDEX cases_by_opening", "DROP TABLE log_head"]}
    for newer in sorted(undo, reverse=True):
        if newer > version:
            for statement in undo[newer]:
                yield from Statement(statement)
    yield from Statement("DELETE FROM schema_version WHERE version > ?", (version,))


async def test_migrations_run_once(factory_and_clock: tuple[Factory, Clock]) -> None:
    make, _ = factory_and_clock
    for _ in range(2):
        store = make()
        await store.open()
        try:
            assert await store.read(_versions) == _Versions(len(MIGRATIONS), len(MIGRATIONS))
        finally:
            await store.close()


async def test_fund_totals_are_added_up_from_the_movements_stored_before_them(
    factory_and_clock: tuple[Factory, Clock],
) -> None:
    """A database from before the running totals (migration 3) gets them from its movements."""
    make, _ = factory_and_clock
    store = make()
    await store.open()
    try:
        for i, status in enumerate([FundStatus.SENT, FundStatus.HELD, FundStatus.CREDITED]):
            m = await open_case(store)
            fund = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_FUND_TRANSFER, body=f"f{i}".encode(),
                            amount=100 * (i + 1))
            await store.accept(fund, lambda case, _i, s=status: Decision(case, fund_status=s), receipt_for(fund))
        kept = await store.fund_totals()
        await store.write(lambda: _back_to(2))
    finally:
        await store.close()
    store = make()
    await store.open()
    try:
        upgraded = await store.fund_totals()
        everything = await store.settlement(T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=1))
    finally:
        await store.close()
    assert upgraded == kept == everything and len(everything) == 1
    assert (everything[0].transfers, everything[0].sent_fen, everything[0].held_fen) == (3, 600, 200)


async def test_a_database_of_the_first_schema_upgrades_and_its_cases_move_on(
    factory_and_clock: tuple[Factory, Clock],
) -> None:
    """Cases opened before stages were kept have no stage rows: a message that would finish one
    is accepted, not refused, and the log goes on after the messages already stored."""
    make, clock = factory_and_clock
    store = make()
    await store.open()
    try:
        m = await open_case(store)
        other = await open_case(store)
        await store.write(lambda: _back_to(1))
    finally:
        await store.close()
    store = make()
    await store.open()
    try:
        clock.advance(60)
        table = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE, body=b"table")

        def sent(case: Case | None, _index: CaseIndex) -> Decision:
            assert case is not None
            return Decision(replace(case, state=tracking_pb2.CASE_STATE_TABLE_SENT, balance_fen=0))

        outcome = await store.accept(table, sent, receipt_for(table))
        assert not outcome.replayed and outcome.finished_stages == ()
        assert outcome.sequence == 3  # after the two messages from before the log's head was kept
        view = await store.get_case(m.transfer_id)
        assert view is not None and [s.stage for s in view.stages] == [Stage.INBOUND]
        assert (await store.get_case(other.transfer_id)) is not None
        fresh = incoming(str(uuid.uuid4()))
        assert (await store.accept(fresh, opening(fresh), receipt_for(fresh))).sequence == 4
    finally:
        await store.close()



async def test_messages_from_before_the_log_are_logged_when_it_arrives(
    factory_and_clock: tuple[Factory, Clock],
) -> None:
    """Migration 4 logs every message already stored, in sequence order, each fund transfer
    followed by its movement as it stands; the log goes on after them, and they are provable."""
    make, _ = factory_and_clock
    store = make()
    await store.open()
    try:
        m = await open_case(store)
        fund = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_FUND_TRANSFER, body=b"fund", amount=700)
        await store.accept(fund, lambda case, _i: Decision(case, fund_status=FundStatus.HELD), receipt_for(fund))
        await store.write(lambda: _back_to(3))
    finally:
        await store.close()
    store = make()
    await store.open()
    try:
        later = await open_case(store)
        # after the 2 messages and 1 movement from before
        assert (await store.leaf_of(later.message_id) or (None, None))[:2] == (later.transfer_id, 3)
        published = await store.publish_checkpoint(lambda size, root: f"{size}".encode())
        assert published is not None and published.tree_size == 4
        proof = await store.inclusion_proof(m.message_id, 0)
        tlog.check_inclusion(proof.hashes, 4, published.root_hash, proof.leaf_index, tlog.leaf_hash(proof.entry))
        logged = entries.read_entry(proof.entry).message
        assert logged.case_state == 0  # not the case's last message: its state then is not known
        assert (await store.leaf_of(fund.message_id) or (None, None))[:2] == (fund.transfer_id, 1)
    finally:
        await store.close()


def _legacy_rows(states: dict[str, tuple[int, int]]) -> Steps[None]:
    """Cases as the release with migration 3 kept them, written as it wrote them: `states` maps a
    transfer id to (state, closed). Each has a table accepted at T0 + 1 h and a fund transfer of
    5,000 fen accepted at T0 + 2 h (its status by the state, as 3 knew them), the stages of the
    time: outbound from T0, inbound from the table, total; a review decision at T0 + 3 h where
    it was held and decided."""
    def us(hours: float) -> int:
        return micros(T0 + dt.timedelta(hours=hours))

    status = {tracking_pb2.CASE_STATE_HELD_FOR_REVIEW: "held", tracking_pb2.CASE_STATE_FUNDS_SENT: "sent",
              tracking_pb2.CASE_STATE_INBOUND_REJECTED: "rejected", tracking_pb2.CASE_STATE_REVIEW_REJECTED: "rejected",
              tracking_pb2.CASE_STATE_COMPLETED: "credited"}
    sequence = 0
    for i, (tid, (state, closed)) in enumerate(states.items()):
        yield from Statement(
            "INSERT INTO cases (transfer_id, state, closed, outbound, inbound, applicant, insurance_type,"
            " inbound_insurance_type, person_key, suspension_date, enrollment_date, balance_fen, fund_message_id,"
            " opened_at, updated_at) VALUES (?, ?, ?, '320100', '330100', '320100', 310, 310, ?, '2026-11-01', '',"
            " 5000, ?, ?, ?)", (tid, state, closed, f"person-{i}".encode(), f"fund-{tid}", us(0), us(4)))
        kinds = [(f"notice-{tid}", envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE, 0),
                 (f"table-{tid}", envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE, 1),
                 (f"fund-{tid}", envelope_pb2.MESSAGE_KIND_FUND_TRANSFER, 2)]
        if state in (tracking_pb2.CASE_STATE_REVIEW_REJECTED,):
            kinds.append((f"review-{tid}", envelope_pb2.MESSAGE_KIND_REVIEW_DECISION, 3))
        for message_id, kind, hours in kinds:
            sequence += 1
            yield from Statement(
                "INSERT INTO messages (sequence, message_id, transfer_id, kind, sender, receiver, created_at,"
                " accepted_at, fingerprint, ack_status, signed_message, receipt)"
                " VALUES (?, ?, ?, ?, '320100', '330100', ?, ?, ?, 0, ?, ?)",
                (sequence, message_id, tid, kind, us(hours), us(hours), message_id.encode(), b"m", b"r"))
        yield from Statement(
            "INSERT INTO fund_movements (transfer_id, message_id, amount_fen, status, accepted_at, updated_at)"
            " VALUES (?, ?, 5000, ?, ?, ?)", (tid, f"fund-{tid}", status[state], us(2), us(4)))
        finished = us(4) if closed else None
        for stage, order, start in (("outbound", 0, 0), ("inbound", 2, 1), ("total", 3, 0)):
            yield from Statement(
                "INSERT INTO case_stages (transfer_id, stage, stage_order, outbound_province, inbound_province,"
                " started_at, deadline, finished_at) VALUES (?, ?, ?, '32', '33', ?, ?, ?)",
                (tid, stage, order, us(start), us(start + 24 * 20), us(2) if stage == "outbound" else finished))
    yield from Statement("UPDATE log_head SET sequence = ?", (sequence,))
    yield from Statement("DELETE FROM fund_totals")
    yield from Statement(FUND_TOTALS_FROM_MOVEMENTS)


class _StageNow(NamedTuple):
    transfer_id: str
    stage: str
    started_at: int
    deadline: int
    owner: str
    owner_province: str
    calendar_version: int


def _stages() -> Steps[list[_StageNow]]:
    return (yield from Query("SELECT transfer_id, stage, started_at, deadline, owner, owner_province,"
                             " calendar_version FROM case_stages ORDER BY transfer_id, stage", (), _StageNow))


async def test_a_store_of_migration_3_upgrades_to_the_measures(factory_and_clock: tuple[Factory, Clock]) -> None:
    """Migrations 4 to 7 on what migration 3's release stored: the inbound clock restarted where
    funds were awaited, held or released; owners and the stage totals as the measures count them;
    fund movements keep their status (a rejection from before returns were tracked stays
    rejected, counted back with the outbound side), and the log agrees with the rows."""
    make, _ = factory_and_clock
    held, sent, rejected, stopped, done = (f"t{i}" for i in range(5))
    store = make()
    await store.open()
    try:
        await store.write(lambda: _back_to(3))
        await store.write(lambda: _legacy_rows({
            held: (tracking_pb2.CASE_STATE_HELD_FOR_REVIEW, 0), sent: (tracking_pb2.CASE_STATE_FUNDS_SENT, 0),
            rejected: (tracking_pb2.CASE_STATE_INBOUND_REJECTED, 1),
            stopped: (tracking_pb2.CASE_STATE_REVIEW_REJECTED, 1), done: (tracking_pb2.CASE_STATE_COMPLETED, 1)}))
    finally:
        await store.close()
    store = make()
    await store.open()
    try:
        retimed = await store.retime_stages()
        stages = {(s.transfer_id, s.stage): s for s in await store.read(_stages)}
        cases = {t: await store.get_case(t) for t in (held, sent, rejected, stopped, done)}
        totals = await store.stage_totals()
        [line] = await store.fund_totals()
    finally:
        await store.close()
    assert (held, "inbound") not in stages and (stopped, "inbound") not in stages  # the funds never reached it
    released = micros(T0 + dt.timedelta(hours=2))  # the fund transfer: inbound's clock starts there
    for tid in (sent, rejected, done):
        inbound = stages[(tid, "inbound")]
        assert inbound.started_at == released and inbound.calendar_version == 0
        assert inbound.deadline == micros(SLA.start(Stage.INBOUND, from_micros(released)).deadline)
        assert (inbound.owner, inbound.owner_province) == ("inbound", "33")
    assert (stages[(held, "outbound")].owner, stages[(held, "total")].owner_province) == ("outbound", "")
    kept = cases[rejected]
    assert kept is not None and kept.case.state == tracking_pb2.CASE_STATE_INBOUND_REJECTED and kept.case.closed
    assert (rejected, "return") not in stages
    assert retimed.retimed == 3  # the three inbound stages counted again from the funds' release
    assert (line.sent_fen, line.credited_fen, line.held_fen, line.in_flight_fen, line.returned_fen,
            line.awaiting_return_fen, line.rejected_fen) == (25_000, 5_000, 5_000, 5_000, 10_000, 0, 10_000)
    assert line.sent_fen == line.credited_fen + line.returned_fen + line.held_fen + line.in_flight_fen
    finished = {(t.stage, t.result): t.stages for t in totals}
    assert finished[(Stage.TOTAL, Timeliness.ON_TIME)] == 3 and finished[(Stage.OUTBOUND, Timeliness.ON_TIME)] == 5


class _Column(NamedTuple):
    name: str


def _delivery_columns(store: object) -> Steps[list[_Column]]:
    return (yield from Query(
        "SELECT column_name AS name FROM information_schema.columns WHERE table_name = 'deliveries'"
        " AND table_schema = current_schema()" if isinstance(store, postgres.PostgresStore) else
        "SELECT name FROM pragma_table_info('deliveries')", (), _Column))


async def test_a_store_of_migration_9_keys_its_deliveries_and_cases_by_the_log(
    factory_and_clock: tuple[Factory, Clock],
) -> None:
    """Migration 10 on what migration 9's release stored: deliveries keyed by their message's
    sequence keep their states, their order within a case and their dead letters; a case's
    messages are found by when it opened, so a retry is still answered with its receipt and the
    next message is decided on the case's messages."""
    make, clock = factory_and_clock
    lease = dt.timedelta(seconds=30)
    store = make()
    await store.open()
    try:
        notice = await open_case(store)
        table = incoming(notice.transfer_id, kind=envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE, body=b"table")
        await store.accept(table, lambda case, _i: Decision(case), receipt_for(table))
        other = await open_case(store)
        first = await store.claim_deliveries("zhejiang", None, limit=10, lease=lease, max_attempts=5, now=clock())
        assert [d.message_id for d in first.deliveries] == [notice.message_id, other.message_id]
        await store.ack_delivery("zhejiang", notice.message_id, clock())
        await store.end_leases("zhejiang", [LeaseEnd(other.message_id, "330100", 1, counted=True,
                                                     dead=DeadReason.STREAM_ENDED)], clock())
        receipt = await store.receipt_of(notice.message_id)
        await store.write(lambda: _back_to(9))
    finally:
        await store.close()
    store = make()
    await store.open()
    try:
        columns = {c.name for c in await store.read(lambda: _delivery_columns(store))}
        assert "message_id" not in columns and {"sequence", "receiver"} <= columns
        view = await store.get_case(notice.transfer_id)
        assert view is not None
        assert [(m.message_id, m.delivery_state) for m in view.messages] == [
            (notice.message_id, tracking_pb2.DELIVERY_STATE_ACKNOWLEDGED),
            (table.message_id, tracking_pb2.DELIVERY_STATE_PENDING)]
        [letter] = await store.dead_letters(DeadLetterQuery(platform="zhejiang"))
        assert (letter.message_id, letter.reason) == (other.message_id, DeadReason.STREAM_ENDED.value)
        claimed = await store.claim_deliveries("zhejiang", None, limit=10, lease=lease, max_attempts=5, now=clock())
        assert [d.message_id for d in claimed.deliveries] == [table.message_id]  # the dead letter holds its case
        assert await store.redrive("zhejiang", [other.message_id], clock()) == 1
        assert await store.acknowledged("zhejiang", [notice.message_id, table.message_id]) == {notice.message_id}
        again = await store.accept(notice, opening(notice), receipt_for(notice))
        assert again.replayed and again.receipt == receipt
        seen: list[set[str]] = []

        def decided(case: Case | None, _index: CaseIndex) -> Decision:
            assert case is not None
            seen.append(set(case.messages))
            return Decision(case)

        clock.advance(60)
        fund = incoming(notice.transfer_id, kind=envelope_pb2.MESSAGE_KIND_ACKNOWLEDGEMENT, body=b"ack")
        assert not (await store.accept(fund, decided, receipt_for(fund))).replayed
        assert seen == [{notice.message_id, table.message_id}]
        view = await store.get_case(notice.transfer_id)
        assert view is not None and [m.message_id for m in view.messages][-1] == fund.message_id
    finally:
        await store.close()


class _CaseKey(NamedTuple):
    transfer_id: str
    key_id: str
    person_key: bytes


def _case_keys() -> Steps[dict[str, tuple[str, bytes]]]:
    rows = yield from Query("SELECT transfer_id, key_id, person_key FROM cases", (), _CaseKey)
    return {r.transfer_id: (r.key_id, bytes(r.person_key)) for r in rows}


def _plain_digests() -> Steps[None]:
    """Every case's person as the release before migration 11 kept it: a plain digest."""
    yield from Statement("UPDATE cases SET person_key = ?", (b"plain digest of an ID number",))


async def test_cases_from_before_person_keys_lose_or_await_their_key(factory_and_clock: tuple[Factory, Clock]) -> None:
    """Migration 11 erases the plain digest of every closed case (nothing reads it) and leaves each
    open one under no key id, found by the upkeep with its opening message, to be keyed (the
    gateway does it at start-up, before it serves)."""
    make, _ = factory_and_clock
    store = make()
    await store.open()
    try:
        m = await open_case(store)
        closed = incoming(str(uuid.uuid4()), body=b"refused notice")
        await store.accept(closed, lambda case, _i: Decision(replace(opened(closed),
                                                                     state=tracking_pb2.CASE_STATE_REFUSED)),
                           receipt_for(closed))
        await store.write(lambda: _back_to(10))
        await store.write(_plain_digests)
    finally:
        await store.close()
    store = make()
    await store.open()
    try:
        assert await store.read(_case_keys) == {m.transfer_id: ("", b"plain digest of an ID number"),
                                                closed.transfer_id: ("", b"")}
        unkeyed = await store.stale_index_entries(KEYS.current, 10, unkeyed_only=True)
        assert [(s.kind, s.entry_id, s.signed_message) for s in unkeyed] == [("case", m.transfer_id,
                                                                             m.signed_message)]
        assert await store.rekey_index_entry(unkeyed[0], PersonKey(KEYS.current, b"keyed"))
        assert await store.stale_index_entries(KEYS.current, 10, unkeyed_only=True) == []
        assert await store.read(_case_keys) == {m.transfer_id: (KEYS.current, b"keyed"), closed.transfer_id: ("", b"")}
    finally:
        await store.close()

"""The store's logic in SQL, once for every engine (sans-I/O).

Each operation is a generator that yields `Query` objects and receives their results; an
engine's driver runs it inside one transaction (SQLite: `sqlite.py`, on its writer thread;
PostgreSQL: `postgres.py`, on an async connection). Queries use `?` placeholders and portable
SQL; what differs between engines is a `Query.fetch` the driver interprets (locking a case,
waking other replicas) and the dialect's schema.

Times are stored as integer microseconds since the epoch, converted exactly (page tokens and
deadlines compare them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Generator, Sequence
from enum import Enum
from typing import Any, NamedTuple, TypeVar

from gateway.core.case import Case, Decision, MessageRef, Side
from gateway.core.errors import IdempotencyConflict, NotFound, RuleViolation
from gateway.core.sla import Sla, Stage, province
from gateway.core.timestamps import from_micros, micros
from gateway.store import (
    AcceptOutcome,
    CaseQuery,
    CaseView,
    ClaimedDelivery,
    Decide,
    DeliveryStats,
    HeldTransfer,
    IncomingMessage,
    MakeReceipt,
    MessageView,
    SettlementLine,
    StageCount,
    StageRecord,
)
from mitransfer.v1 import envelope_pb2, tracking_pb2

PENDING = tracking_pb2.DELIVERY_STATE_PENDING
IN_FLIGHT = tracking_pb2.DELIVERY_STATE_IN_FLIGHT
ACKNOWLEDGED = tracking_pb2.DELIVERY_STATE_ACKNOWLEDGED
DEAD_LETTER = tracking_pb2.DELIVERY_STATE_DEAD_LETTER
HELD = tracking_pb2.DELIVERY_STATE_HELD
CANCELLED = tracking_pb2.DELIVERY_STATE_CANCELLED

T = TypeVar("T")


class Fetch(Enum):
    ONE = "one"            # the first row, or None
    ALL = "all"            # every row
    ROWCOUNT = "rowcount"  # rows changed
    MANY = "many"          # executemany over `params` (a list of tuples); nothing back
    LOCK_CASE = "lock"     # serialize writers of one case (params: transfer_id); None back
    WAKE = "wake"          # tell other processes a platform may have deliveries (params: platform)


class Query(NamedTuple):  # a tuple: an accept makes about ten, and a frozen dataclass costs more to build
    sql: str
    params: Sequence[Any] = ()
    fetch: Fetch = Fetch.ALL


Steps = Generator[Query, Any, T]
_STAGE_ORDER = {stage: i for i, stage in enumerate(Stage)}  # case_stages.stage_order

# The fund totals of the movements already stored: migration 3 runs it (so it changes only with a
# new migration), and so do the bench's bulk loaders.
FUND_TOTALS_FROM_MOVEMENTS = (
    "INSERT INTO fund_totals (outbound_province, inbound_province, status, amount_fen, transfers)"
    " SELECT substr(c.outbound, 1, 2), substr(c.inbound, 1, 2), f.status, SUM(f.amount_fen), COUNT(*)"
    " FROM fund_movements f JOIN cases c ON c.transfer_id = f.transfer_id GROUP BY 1, 2, 3")

# Versioned schema, in SQLite's words (`postgres_ddl` translates): each entry upgrades from the
# version before it. Never edit a released entry; add one.
MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE cases (
        transfer_id     TEXT PRIMARY KEY,
        state           INTEGER NOT NULL,
        closed          INTEGER NOT NULL,
        outbound        TEXT NOT NULL,
        inbound         TEXT NOT NULL,
        applicant       TEXT NOT NULL,
        insurance_type  INTEGER NOT NULL,
        inbound_insurance_type INTEGER NOT NULL,
        person_key      BLOB NOT NULL,
        suspension_date TEXT NOT NULL,
        enrollment_date TEXT NOT NULL,
        balance_fen     INTEGER,
        fund_message_id TEXT,
        opened_at       INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL
    );
    -- One open case per person and outbound agency, whatever the code above does.
    CREATE UNIQUE INDEX cases_one_open_per_person ON cases (person_key, outbound) WHERE closed = 0;
    CREATE TABLE messages (
        sequence        INTEGER PRIMARY KEY,
        message_id      TEXT NOT NULL UNIQUE,
        transfer_id     TEXT NOT NULL REFERENCES cases (transfer_id),
        kind            INTEGER NOT NULL,
        sender          TEXT NOT NULL,
        receiver        TEXT NOT NULL,
        created_at      INTEGER NOT NULL,
        accepted_at     INTEGER NOT NULL,
        fingerprint     BLOB NOT NULL,
        ack_status      INTEGER NOT NULL,
        signed_message  BLOB NOT NULL,
        receipt         BLOB NOT NULL
    );
    CREATE INDEX messages_by_case ON messages (transfer_id, sequence);
    -- At most one fund movement per case, and its status is the settlement ledger.
    CREATE TABLE fund_movements (
        transfer_id     TEXT PRIMARY KEY REFERENCES cases (transfer_id),
        message_id      TEXT NOT NULL UNIQUE REFERENCES messages (message_id),
        amount_fen      INTEGER NOT NULL CHECK (amount_fen > 0),
        status          TEXT NOT NULL CHECK (status IN ('held', 'sent', 'credited', 'rejected')),
        accepted_at     INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL
    );
    CREATE INDEX fund_movements_by_day ON fund_movements (accepted_at);
    CREATE TABLE deliveries (
        message_id      TEXT NOT NULL REFERENCES messages (message_id),
        receiver        TEXT NOT NULL,
        platform        TEXT NOT NULL,
        transfer_id     TEXT NOT NULL,
        sequence        INTEGER NOT NULL,
        accepted_at     INTEGER NOT NULL,
        state           INTEGER NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        visible_at      INTEGER NOT NULL,
        first_delivered_at INTEGER,
        acknowledged_at INTEGER,
        PRIMARY KEY (message_id, receiver)
    );
    CREATE INDEX deliveries_open ON deliveries (platform, sequence)
        WHERE state IN ({PENDING}, {IN_FLIGHT});
    CREATE INDEX deliveries_open_by_case ON deliveries (platform, transfer_id, sequence)
        WHERE state IN ({PENDING}, {IN_FLIGHT}, {HELD});
    CREATE INDEX deliveries_dead ON deliveries (platform) WHERE state = {DEAD_LETTER};
    CREATE INDEX deliveries_held ON deliveries (accepted_at) WHERE state = {HELD};
    CREATE INDEX cases_idle ON cases (state, updated_at) WHERE closed = 0;
    """,
    """
    -- Time-limited stages of each case (gateway.core.sla): started, due and finished.
    CREATE TABLE case_stages (
        transfer_id       TEXT NOT NULL REFERENCES cases (transfer_id),
        stage             TEXT NOT NULL,
        stage_order       INTEGER NOT NULL,
        outbound_province TEXT NOT NULL,
        inbound_province  TEXT NOT NULL,
        started_at        INTEGER NOT NULL,
        deadline          INTEGER NOT NULL,
        finished_at       INTEGER,
        PRIMARY KEY (transfer_id, stage)
    );
    CREATE INDEX case_stages_open ON case_stages (deadline) WHERE finished_at IS NULL;
    CREATE INDEX cases_by_opening ON cases (opened_at, transfer_id);
    -- The log's head: the last sequence handed out.
    CREATE TABLE log_head (sequence INTEGER NOT NULL);
    INSERT INTO log_head (sequence) SELECT COALESCE(MAX(sequence), 0) FROM messages;
    """,
    f"""
    -- Fund movements added up per province pair and status, kept by every accept that inserts a
    -- movement or changes its status: the gauges read a few rows, not every movement ever made.
    CREATE TABLE fund_totals (
        outbound_province TEXT NOT NULL,
        inbound_province  TEXT NOT NULL,
        status            TEXT NOT NULL,
        amount_fen        INTEGER NOT NULL,
        transfers         INTEGER NOT NULL,
        PRIMARY KEY (outbound_province, inbound_province, status)
    );
    {FUND_TOTALS_FROM_MOVEMENTS};
    """,
)


def postgres_ddl(script: str) -> str:
    """A migration in PostgreSQL's words: 64-bit integers (times in microseconds) and bytea."""
    return script.replace("INTEGER", "BIGINT").replace("BLOB", "BYTEA")

def opt_time(value: int | None) -> dt.datetime | None:
    return None if value is None else from_micros(value)


class _Index:
    """The rules' view of other cases, answered from the transaction (see `_decide`). A question
    not fetched yet is answered "no open case", the usual answer, and noted."""

    def __init__(self, answers: dict[tuple[bytes, str], str | None]) -> None:
        self._answers = answers
        self.guessed: list[tuple[bytes, str]] = []

    def open_case_for(self, person_key: bytes, outbound: str) -> str | None:
        key = (person_key, outbound)
        if key not in self._answers:
            self.guessed.append(key)
            return None
        return self._answers[key]


def _decide(decide: Decide, case: Case | None) -> Steps[Decision]:
    """Run the (pure) decision; it runs again only if an index answer it was given on trust turns
    out otherwise, so the usual message is decided once."""
    answers: dict[tuple[bytes, str], str | None] = {}
    while True:
        index = _Index(answers)
        try:
            decision = decide(case, index)
        except Exception:
            if not (yield from _fetch_guessed(index, answers)):
                raise
            continue
        if not (yield from _fetch_guessed(index, answers)):
            return decision


def _fetch_guessed(index: _Index, answers: dict[tuple[bytes, str], str | None]) -> Steps[bool]:
    """Fetch the answers `index` guessed; True if any was not "no open case"."""
    wrong = False
    for key in index.guessed:
        row = yield Query("SELECT transfer_id FROM cases WHERE person_key = ? AND outbound = ? AND closed = 0",
                          key, Fetch.ONE)
        answers[key] = None if row is None else str(row[0])
        wrong = wrong or row is not None
    return wrong


_CASE_COLUMNS = ("state, outbound, inbound, applicant, insurance_type, inbound_insurance_type, person_key,"
                 " suspension_date, enrollment_date, balance_fen, fund_message_id")  # as `_case_from` reads them


def load_case(transfer_id: str, message_rows: list[tuple[str, Any, str]]) -> Steps[Case | None]:
    """The case as committed, given its messages' (message_id, kind, sender) rows."""
    row = yield Query(f"SELECT {_CASE_COLUMNS} FROM cases WHERE transfer_id = ?", (transfer_id,), Fetch.ONE)
    return None if row is None else _case_from(transfer_id, row, message_rows)


def _case_from(transfer_id: str, row: Sequence[Any], message_rows: Sequence[Sequence[Any]]) -> Case:
    """A case from its `_CASE_COLUMNS` and its messages' (message_id, kind, sender, …) rows."""
    outbound = row[1]
    refs = {r[0]: MessageRef(r[1], _side_of(r[1], r[2], outbound)) for r in message_rows}
    return Case(
        transfer_id=transfer_id, state=row[0], outbound=outbound, inbound=row[2], applicant=row[3],
        insurance_type=row[4], inbound_insurance_type=row[5], person_key=bytes(row[6]), suspension_date=row[7],
        enrollment_date=row[8], balance_fen=row[9], fund_message_id=row[10], messages=refs,
    )


def _side_of(kind: int, sender: str, outbound: str) -> Side:
    if kind == envelope_pb2.MESSAGE_KIND_REVIEW_DECISION:
        return Side.REVIEWER
    if kind == envelope_pb2.MESSAGE_KIND_CASE_EXPIRED:
        return Side.GATEWAY
    return Side.OUTBOUND if sender == outbound else Side.INBOUND


def accept(m: IncomingMessage, decide: Decide, make_receipt: MakeReceipt, clock: Callable[[], dt.datetime],
           sla: Sla) -> Steps[AcceptOutcome]:
    """Idempotency check, case decision, log append, effects, stages, deliveries, receipt."""
    yield Query("", (m.transfer_id,), Fetch.LOCK_CASE)
    now = clock()  # after the case lock: within a case, acceptance times follow the log's order
    # One read for both questions: was this message id seen (anywhere), and what has the case so far.
    rows = yield Query(
        "SELECT message_id, kind, sender, transfer_id, sequence, CASE WHEN message_id = ? THEN fingerprint END,"
        " CASE WHEN message_id = ? THEN receipt END FROM messages WHERE message_id = ? OR transfer_id = ?",
        (m.message_id, m.message_id, m.message_id, m.transfer_id))
    for message_id, _, _, _, sequence, seen_fingerprint, receipt in rows:
        if message_id == m.message_id:
            if bytes(seen_fingerprint) != m.fingerprint:
                raise IdempotencyConflict(
                    f"message_id {m.message_id} was already used for a different message",
                    reason="MESSAGE_ID_REUSED", metadata={"message_id": m.message_id},
                )
            return AcceptOutcome(receipt=bytes(receipt), sequence=sequence, replayed=True)
    before = yield from load_case(m.transfer_id, [(r[0], r[1], r[2]) for r in rows if r[3] == m.transfer_id])
    decision = yield from _decide(decide, before)
    after = decision.case
    fund_was = None  # (status, amount) of the case's fund movement, if this message changes it
    if m.kind != envelope_pb2.MESSAGE_KIND_FUND_TRANSFER and decision.fund_status is not None:
        fund_was = yield Query("SELECT status, amount_fen FROM fund_movements WHERE transfer_id = ?",
                               (m.transfer_id,), Fetch.ONE)
    now_us = micros(now)
    stages = sla.changes(before, after, now)
    row = (after.state, int(after.closed), after.insurance_type, after.inbound_insurance_type,
           after.suspension_date, after.enrollment_date, after.balance_fen, after.fund_message_id, now_us)
    if before is None:
        yield Query(
            "INSERT INTO cases (state, closed, insurance_type, inbound_insurance_type, suspension_date,"
            " enrollment_date, balance_fen, fund_message_id, updated_at, opened_at, transfer_id, outbound,"
            " inbound, applicant, person_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*row, now_us, after.transfer_id, after.outbound, after.inbound, after.applicant, after.person_key),
            Fetch.ROWCOUNT)
    else:
        yield Query(
            "UPDATE cases SET state = ?, closed = ?, insurance_type = ?, inbound_insurance_type = ?,"
            " suspension_date = ?, enrollment_date = ?, balance_fen = ?, fund_message_id = ?, updated_at = ?"
            " WHERE transfer_id = ?", (*row, after.transfer_id), Fetch.ROWCOUNT)
    # The log's head, taken last: one counter row makes sequences gapless and in commit order
    # across replicas, and holds its lock only for the rest of this transaction.
    (sequence,) = yield Query("UPDATE log_head SET sequence = sequence + 1 RETURNING sequence", (), Fetch.ONE)
    receipt = make_receipt(sequence, now)
    yield Query(
        "INSERT INTO messages (sequence, message_id, transfer_id, kind, sender, receiver, created_at,"
        " accepted_at, fingerprint, ack_status, signed_message, receipt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (sequence, m.message_id, m.transfer_id, m.kind, m.sender, m.receiver, micros(m.created_at),
         now_us, m.fingerprint, m.ack_status, m.signed_message, receipt), Fetch.ROWCOUNT)
    yield from _effects(m, decision, now_us, fund_was)
    yield Query(
        "INSERT INTO case_stages (transfer_id, stage, stage_order, outbound_province, inbound_province, started_at,"
        " deadline) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(after.transfer_id, str(s.stage), _STAGE_ORDER[s.stage], province(after.outbound),
          province(after.inbound), now_us, micros(s.deadline)) for s in stages.started], Fetch.MANY)
    finished: list[StageRecord] = []
    for stage in stages.finished:
        row = yield Query(
            "UPDATE case_stages SET finished_at = ? WHERE transfer_id = ? AND stage = ? AND finished_at IS NULL"
            " RETURNING started_at, deadline", (now_us, after.transfer_id, str(stage)), Fetch.ONE)
        if row is not None:  # None: a case opened before stages were kept has nothing to finish
            finished.append(StageRecord(stage, from_micros(row[0]), from_micros(row[1]), now))
    state = HELD if decision.hold_delivery else PENDING
    yield Query(
        "INSERT INTO deliveries (message_id, receiver, platform, transfer_id, sequence, accepted_at, state,"
        " attempts, visible_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
        [(m.message_id, agency, platform, m.transfer_id, sequence, now_us, state, now_us)
         for platform, agency in m.deliveries], Fetch.MANY)
    for platform in sorted({p for p, _ in m.deliveries}):
        yield Query("", (platform,), Fetch.WAKE)
    return AcceptOutcome(receipt=receipt, sequence=sequence, replayed=False, outbound=after.outbound,
                         inbound=after.inbound, finished_stages=tuple(finished))


def _effects(m: IncomingMessage, decision: Decision, now_us: int, fund_was: Sequence[Any] | None) -> Steps[None]:
    if m.kind == envelope_pb2.MESSAGE_KIND_FUND_TRANSFER:
        yield Query(
            "INSERT INTO fund_movements (transfer_id, message_id, amount_fen, status, accepted_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (m.transfer_id, m.message_id, m.fund_amount_fen, str(decision.fund_status), now_us, now_us),
            Fetch.ROWCOUNT)
        yield _add_to_totals(decision.case, [(str(decision.fund_status), m.fund_amount_fen, 1)])
    elif decision.fund_status is not None:
        status = str(decision.fund_status)
        yield Query("UPDATE fund_movements SET status = ?, updated_at = ? WHERE transfer_id = ?",
                    (status, now_us, m.transfer_id), Fetch.ROWCOUNT)
        if fund_was is not None and fund_was[0] != status:  # the movement moves from one total to another
            yield _add_to_totals(decision.case, [(fund_was[0], -fund_was[1], -1), (status, fund_was[1], 1)])
    if decision.release_message is not None:
        yield Query("UPDATE deliveries SET state = ?, visible_at = ? WHERE message_id = ? AND state = ?",
                    (PENDING, now_us, decision.release_message, HELD), Fetch.ROWCOUNT)
    if decision.cancel_message is not None:
        yield Query("UPDATE deliveries SET state = ? WHERE message_id = ? AND state = ?",
                    (CANCELLED, decision.cancel_message, HELD), Fetch.ROWCOUNT)


def _add_to_totals(case: Case, changes: Sequence[tuple[str, int, int]]) -> Query:
    """One statement adding (status, fen, transfers) `changes` to the case's province pair, each
    to a status of its own."""
    provinces = (province(case.outbound), province(case.inbound))
    return Query(
        "INSERT INTO fund_totals (outbound_province, inbound_province, status, amount_fen, transfers)"
        f" VALUES {', '.join('(?, ?, ?, ?, ?)' for _ in changes)}"
        " ON CONFLICT (outbound_province, inbound_province, status) DO UPDATE SET"
        " amount_fen = fund_totals.amount_fen + excluded.amount_fen,"
        " transfers = fund_totals.transfers + excluded.transfers",
        tuple(v for status, fen, transfers in changes for v in (*provinces, status, fen, transfers)), Fetch.ROWCOUNT)


def claim_deliveries(platform: str, agencies: frozenset[str] | None, *, limit: int, lease: dt.timedelta,
                     max_attempts: int, now: dt.datetime, lock_rows: str) -> Steps[list[ClaimedDelivery]]:
    """Lease the oldest open delivery of each case (order within a case holds across
    redeliveries). `lock_rows` is the engine's row-locking clause (PostgreSQL: skip rows another
    replica is claiming)."""
    now_us = micros(now)
    where_agency = ""
    params: list[Any] = [platform, now_us]
    if agencies is not None:
        where_agency = f" AND d.receiver IN ({','.join('?' * len(agencies))})"
        params += sorted(agencies)
    rows = yield Query(
        f"""SELECT d.message_id, d.receiver, d.transfer_id, d.attempts, m.signed_message, m.receipt
            FROM deliveries d JOIN messages m ON m.message_id = d.message_id
            WHERE d.platform = ? AND d.state IN ({PENDING}, {IN_FLIGHT}) AND d.visible_at <= ?
              {where_agency}
              AND NOT EXISTS (
                SELECT 1 FROM deliveries e
                WHERE e.platform = d.platform AND e.transfer_id = d.transfer_id
                  AND e.state IN ({PENDING}, {IN_FLIGHT}, {HELD}) AND e.sequence < d.sequence)
            ORDER BY d.sequence LIMIT ?{lock_rows}""",
        (*params, limit))
    claimed = []
    visible_at = micros(now + lease)
    for message_id, receiver, transfer_id, attempts, signed, receipt in rows:
        key = (message_id, receiver)
        if attempts >= max_attempts:
            yield Query("UPDATE deliveries SET state = ? WHERE message_id = ? AND receiver = ?",
                        (DEAD_LETTER, *key), Fetch.ROWCOUNT)
            continue
        yield Query(
            "UPDATE deliveries SET state = ?, attempts = attempts + 1, visible_at = ?,"
            " first_delivered_at = COALESCE(first_delivered_at, ?) WHERE message_id = ? AND receiver = ?",
            (IN_FLIGHT, visible_at, now_us, *key), Fetch.ROWCOUNT)
        claimed.append(ClaimedDelivery(message_id, transfer_id, bytes(signed), bytes(receipt), attempts + 1))
    return claimed


def ack_delivery(platform: str, message_id: str, now: dt.datetime) -> Steps[None]:
    updated = yield Query(
        "UPDATE deliveries SET state = ?, acknowledged_at = COALESCE(acknowledged_at, ?)"
        " WHERE message_id = ? AND platform = ? AND state NOT IN (?, ?)",
        (ACKNOWLEDGED, micros(now), message_id, platform, HELD, CANCELLED), Fetch.ROWCOUNT)
    if not updated:
        raise NotFound(f"no delivery {message_id} for platform {platform}",
                       reason="DELIVERY_NOT_FOUND", metadata={"message_id": message_id})
    yield Query("", (platform,), Fetch.WAKE)  # the next message of that case may now go out


_VIEW_COLUMNS = f"transfer_id, opened_at, updated_at, {_CASE_COLUMNS}"  # as `_views` reads them


def get_case(transfer_id: str) -> Steps[CaseView | None]:
    rows = yield Query(f"SELECT {_VIEW_COLUMNS} FROM cases WHERE transfer_id = ?", (transfer_id,))
    views = yield from _views(rows, with_messages=True)
    return views[0] if views else None


def idle_cases(state: int, idle_since: dt.datetime, limit: int) -> Steps[list[CaseView]]:
    rows = yield Query(f"SELECT {_VIEW_COLUMNS} FROM cases WHERE state = ? AND updated_at < ? ORDER BY updated_at"
                       " LIMIT ?", (state, micros(idle_since), limit))
    return (yield from _views(rows, with_messages=True))


def _views(rows: Sequence[Sequence[Any]], *, with_messages: bool) -> Steps[list[CaseView]]:
    """Views of the cases whose `_VIEW_COLUMNS` rows are given, in their order. The messages and
    stages of all of them are read with one query each, whatever their number: with their
    delivery state if `with_messages`, else only as the case's rules need them."""
    if not rows:
        return []
    transfer_ids = tuple(str(r[0]) for r in rows)
    # The list padded to a power of two (repeating its last id) keeps the number of statement
    # texts small, so that pages of every size do not crowd PostgreSQL's prepared statements.
    padded = transfer_ids + transfer_ids[-1:] * ((1 << (len(transfer_ids) - 1).bit_length()) - len(transfer_ids))
    marks = ", ".join("?" * len(padded))
    if with_messages:  # a message without a delivery (to no platform) is the case's, but not a MessageView
        message_rows = yield Query(
            f"""SELECT m.message_id, m.kind, m.sender, m.receiver, m.sequence, m.created_at, m.accepted_at,
                       m.ack_status, MIN(d.state), MIN(d.attempts), MIN(d.first_delivered_at),
                       MAX(d.acknowledged_at), m.transfer_id
                FROM messages m LEFT JOIN deliveries d ON d.message_id = m.message_id
                WHERE m.transfer_id IN ({marks})
                GROUP BY m.sequence, m.message_id, m.kind, m.sender, m.receiver, m.created_at, m.accepted_at,
                         m.ack_status, m.transfer_id
                ORDER BY m.sequence""", padded)
    else:
        message_rows = yield Query(
            f"SELECT message_id, kind, sender, transfer_id FROM messages WHERE transfer_id IN ({marks})", padded)
    stage_rows = yield Query(
        f"SELECT transfer_id, stage, started_at, deadline, finished_at FROM case_stages"
        f" WHERE transfer_id IN ({marks}) ORDER BY started_at, stage_order", padded)
    messages: dict[str, list[Sequence[Any]]] = {t: [] for t in transfer_ids}
    for r in message_rows:
        messages[r[-1]].append(r)
    stages: dict[str, list[StageRecord]] = {t: [] for t in transfer_ids}
    for t, stage, started, deadline, finished in stage_rows:
        stages[t].append(StageRecord(Stage(stage), from_micros(started), from_micros(deadline), opt_time(finished)))
    views = []
    for transfer_id, opened, updated, *columns in rows:
        mine = messages[transfer_id]
        views.append(CaseView(
            case=_case_from(transfer_id, columns, mine), opened_at=from_micros(opened),
            updated_at=from_micros(updated), stages=stages[transfer_id],
            messages=[
                MessageView(
                    message_id=r[0], kind=r[1], sender=r[2], receiver=r[3], sequence=r[4],
                    created_at=from_micros(r[5]), accepted_at=from_micros(r[6]), ack_status=r[7],
                    delivery_state=r[8], delivery_attempts=r[9], delivered_at=opt_time(r[10]),
                    acknowledged_at=opt_time(r[11]),
                )
                for r in mine if r[8] is not None
            ] if with_messages else (),
        ))
    return views


def receipt_of(message_id: str) -> Steps[bytes | None]:
    row = yield Query("SELECT receipt FROM messages WHERE message_id = ?", (message_id,), Fetch.ONE)
    return None if row is None else bytes(row[0])


def held_transfers() -> Steps[list[HeldTransfer]]:
    rows = yield Query(
        "SELECT f.transfer_id, f.message_id, c.outbound, c.inbound, f.amount_fen, f.accepted_at"
        " FROM fund_movements f JOIN cases c ON c.transfer_id = f.transfer_id"
        " WHERE f.status = 'held' ORDER BY f.accepted_at")
    return [HeldTransfer(transfer_id=r[0], message_id=r[1], outbound=r[2], inbound=r[3], amount_fen=r[4],
                         held_since=from_micros(r[5])) for r in rows]


def settlement(start: dt.datetime, end: dt.datetime) -> Steps[list[SettlementLine]]:
    rows = yield Query(
        "SELECT substr(c.outbound, 1, 2), substr(c.inbound, 1, 2), f.status, SUM(f.amount_fen), COUNT(*)"
        " FROM fund_movements f JOIN cases c ON c.transfer_id = f.transfer_id"
        " WHERE f.accepted_at >= ? AND f.accepted_at < ? GROUP BY 1, 2, 3",
        (micros(start), micros(end)))
    return _settlement_lines(rows)


def fund_totals() -> Steps[list[SettlementLine]]:
    rows = yield Query("SELECT outbound_province, inbound_province, status, amount_fen, transfers FROM fund_totals")
    return _settlement_lines(rows)


def _settlement_lines(rows: Sequence[Sequence[Any]]) -> list[SettlementLine]:
    """Lines per province pair from (outbound province, inbound province, status, fen, transfers) rows."""
    pairs: dict[tuple[str, str], dict[str, int]] = {}
    for out_p, in_p, status, amount, count in rows:
        totals = pairs.setdefault((out_p, in_p), {"transfers": 0})
        totals[status] = totals.get(status, 0) + int(amount)
        totals["transfers"] += int(count)
    return [
        SettlementLine(
            outbound_province=out_p, inbound_province=in_p,
            sent_fen=sum(t.get(k, 0) for k in ("held", "sent", "credited", "rejected")),
            credited_fen=t.get("credited", 0), held_fen=t.get("held", 0), rejected_fen=t.get("rejected", 0),
            in_flight_fen=t.get("sent", 0), transfers=t["transfers"],
        )
        for (out_p, in_p), t in sorted(pairs.items())
    ]


def delivery_stats() -> Steps[list[DeliveryStats]]:
    stats: dict[str, dict[str, Any]] = {}

    def entry(platform: str) -> dict[str, Any]:
        return stats.setdefault(platform, {"pending": 0, "in_flight": 0, "dead": 0, "oldest": None})

    rows = yield Query(
        f"SELECT platform, state, COUNT(*), MIN(accepted_at) FROM deliveries"
        f" WHERE state IN ({PENDING}, {IN_FLIGHT}) GROUP BY platform, state")
    for platform, state, count, oldest in rows:
        e = entry(platform)
        e["pending" if state == PENDING else "in_flight"] = int(count)
        e["oldest"] = oldest if e["oldest"] is None else min(e["oldest"], oldest)
    rows = yield Query(f"SELECT platform, COUNT(*) FROM deliveries WHERE state = {DEAD_LETTER} GROUP BY platform")
    for platform, count in rows:
        entry(platform)["dead"] = int(count)
    return [DeliveryStats(p, e["pending"], e["in_flight"], e["dead"], opt_time(e["oldest"]))
            for p, e in sorted(stats.items())]


def list_cases(query: CaseQuery) -> Steps[list[CaseView]]:
    where: list[str] = ["1 = 1"]
    args: list[object] = []
    if query.agencies is not None:
        marks = ", ".join("?" * len(query.agencies))
        where.append(f"(outbound IN ({marks}) OR inbound IN ({marks}))")
        args += [*sorted(query.agencies), *sorted(query.agencies)]
    if query.states:
        where.append(f"state IN ({', '.join('?' * len(query.states))})")
        args += sorted(query.states)
    if query.outbound_province:
        where.append("substr(outbound, 1, 2) = ?")
        args.append(query.outbound_province)
    if query.inbound_province:
        where.append("substr(inbound, 1, 2) = ?")
        args.append(query.inbound_province)
    if query.opened_from is not None:
        where.append("opened_at >= ?")
        args.append(micros(query.opened_from))
    if query.opened_before is not None:
        where.append("opened_at < ?")
        args.append(micros(query.opened_before))
    if query.deadline_between is not None:
        where.append("EXISTS (SELECT 1 FROM case_stages s WHERE s.transfer_id = cases.transfer_id"
                     " AND s.finished_at IS NULL AND s.deadline > ? AND s.deadline <= ?)")
        args += [micros(query.deadline_between[0]), micros(query.deadline_between[1])]
    if query.after is not None:
        where.append("(opened_at, transfer_id) > (?, ?)")
        args += [micros(query.after[0]), query.after[1]]
    rows = yield Query(f"SELECT {_VIEW_COLUMNS} FROM cases WHERE {' AND '.join(where)}"
                       " ORDER BY opened_at, transfer_id LIMIT ?", (*args, query.limit))
    return (yield from _views(rows, with_messages=False))


def stage_counts(now: dt.datetime, due_soon_before: dt.datetime) -> Steps[list[StageCount]]:
    rows = yield Query(
        "SELECT stage, outbound_province, inbound_province, COUNT(*),"
        " SUM(CASE WHEN deadline <= ? THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN deadline > ? AND deadline <= ? THEN 1 ELSE 0 END)"
        " FROM case_stages WHERE finished_at IS NULL GROUP BY stage, outbound_province, inbound_province"
        " ORDER BY stage, outbound_province, inbound_province",
        (micros(now), micros(now), micros(due_soon_before)))
    return [StageCount(Stage(r[0]), r[1], r[2], int(r[3]), int(r[4]), int(r[5])) for r in rows]


# The unique index behind the one-open-case rule: a race between replicas ends here.
ONE_OPEN_CASE_INDEX = "cases_one_open_per_person"


def constraint_violation(constraint: str) -> RuleViolation:
    """The rule a schema constraint enforces, refused in the rule's own words where there is one."""
    if ONE_OPEN_CASE_INDEX in constraint or "cases.person_key, cases.outbound" in constraint:
        return RuleViolation("this person already has an open case at this outbound agency",
                             reason="CASE_ALREADY_OPEN")
    return RuleViolation(f"refused by the store's constraints: {constraint}", reason="STORE_CONSTRAINT_VIOLATED")

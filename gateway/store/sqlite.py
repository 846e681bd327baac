"""SQLite store (the embedded default): WAL, synchronous=FULL, one writer thread, group commit.

Every operation is a job run on one dedicated thread that owns the connection. The thread takes
all jobs queued at that moment, runs each inside its own SAVEPOINT (a job that raises is rolled
back alone), then commits once and answers every caller: many accepts share one fsync, and no
caller hears of its write before the commit that holds it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.case import Case, Decision, MessageRef, Side
from gateway.errors import IdempotencyConflict, NotFound, RuleViolation, StoreUnavailable
from gateway.sla import Sla, Stage, province
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
from gateway.workdays import WorkingCalendar
from mitransfer.v1 import envelope_pb2, tracking_pb2

T = TypeVar("T")

PENDING = tracking_pb2.DELIVERY_STATE_PENDING
IN_FLIGHT = tracking_pb2.DELIVERY_STATE_IN_FLIGHT
ACKNOWLEDGED = tracking_pb2.DELIVERY_STATE_ACKNOWLEDGED
DEAD_LETTER = tracking_pb2.DELIVERY_STATE_DEAD_LETTER
HELD = tracking_pb2.DELIVERY_STATE_HELD
CANCELLED = tracking_pb2.DELIVERY_STATE_CANCELLED

# Versioned schema: each entry upgrades from the version before it. Never edit a released entry.
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
    -- Time-limited stages of each case (gateway.sla): started, due and finished.
    CREATE TABLE case_stages (
        transfer_id       TEXT NOT NULL REFERENCES cases (transfer_id),
        stage             TEXT NOT NULL,
        outbound_province TEXT NOT NULL,
        inbound_province  TEXT NOT NULL,
        started_at        INTEGER NOT NULL,
        deadline          INTEGER NOT NULL,
        finished_at       INTEGER,
        PRIMARY KEY (transfer_id, stage)
    );
    CREATE INDEX case_stages_open ON case_stages (deadline) WHERE finished_at IS NULL;
    CREATE INDEX cases_by_opening ON cases (opened_at, transfer_id);
    """,
)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def _us(t: dt.datetime) -> int:
    """Microseconds since the epoch, exactly (no float rounding: page tokens compare them)."""
    return (t - _EPOCH) // _MICROSECOND


def _time(us: int) -> dt.datetime:
    return _EPOCH + us * _MICROSECOND


def _opt_time(us: int | None) -> dt.datetime | None:
    return None if us is None else _time(us)


@dataclass(frozen=True)
class SQLiteConfig:
    path: Path                  # database file; its directory must exist
    batch_max: int = 256        # most jobs committed together
    busy_timeout_ms: int = 5000


@dataclass
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]


class SQLiteStore:
    """The `Store` port on one SQLite file. One process at a time may open a file."""

    def __init__(self, config: SQLiteConfig, clock: Callable[[], dt.datetime], sla: Sla | None = None) -> None:
        self._config = config
        self._clock = clock
        self._sla = sla or Sla(WorkingCalendar())
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="sqlite-writer", daemon=True)
        self._thread.start()
        await ready

    async def close(self) -> None:
        if self._thread is None:
            return
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._config.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a receipt promises durability: fsync every commit
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={self._config.busy_timeout_ms}")
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = row[0] or 0
            for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _run(self, ready: asyncio.Future[None]) -> None:
        assert self._loop is not None
        loop = self._loop
        try:
            conn = self._connect()
            self._migrate(conn)
        except Exception as exc:  # report to open(), then stop the thread
            error = StoreUnavailable(f"cannot open SQLite store: {exc}", reason="STORE_UNAVAILABLE")
            loop.call_soon_threadsafe(_settle, ready, None, error)
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        stopping = False
        while not stopping:
            first = self._jobs.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self._config.batch_max:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            self._run_batch(conn, loop, batch)
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        results: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    value = job.fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    if isinstance(exc, sqlite3.IntegrityError):  # the schema's last word on a rule
                        exc = RuleViolation(f"refused by the store's constraints: {exc}",
                                            reason="STORE_CONSTRAINT_VIOLATED")
                    elif isinstance(exc, sqlite3.Error):
                        exc = StoreUnavailable(f"store error: {exc}", reason="STORE_UNAVAILABLE")
                    results.append((job, None, exc))
                else:
                    conn.execute("RELEASE job")
                    results.append((job, value, None))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failure = StoreUnavailable(f"commit failed: {exc}", reason="STORE_UNAVAILABLE")
            results = [(job, None, failure) for job in batch]
        for job, value, error in results:
            loop.call_soon_threadsafe(_settle, job.future, value, error)

    async def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None or self._loop is None:
            raise StoreUnavailable("store is not open", reason="STORE_UNAVAILABLE")
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put(_Job(fn, future))
        return await future

    # -- the port ----------------------------------------------------------------------------

    async def accept(self, message: IncomingMessage, decide: Decide, make_receipt: MakeReceipt) -> AcceptOutcome:
        return await self._submit(lambda conn: self._accept(conn, message, decide, make_receipt))

    def _accept(
        self, conn: sqlite3.Connection, m: IncomingMessage, decide: Decide, make_receipt: MakeReceipt
    ) -> AcceptOutcome:
        known = conn.execute(
            "SELECT fingerprint, receipt, sequence FROM messages WHERE message_id = ?", (m.message_id,)
        ).fetchone()
        if known is not None:
            if known[0] != m.fingerprint:
                raise IdempotencyConflict(
                    f"message_id {m.message_id} was already used for a different message",
                    reason="MESSAGE_ID_REUSED", metadata={"message_id": m.message_id},
                )
            return AcceptOutcome(receipt=known[1], sequence=known[2], replayed=True)
        before = _load_case(conn, m.transfer_id)
        decision = decide(before, _Index(conn))
        after = decision.case
        now = self._clock()
        now_us = _us(now)
        stages = self._sla.changes(before, after, now)
        sequence = conn.execute("SELECT COALESCE(MAX(sequence), 0) + 1 FROM messages").fetchone()[0]
        receipt = make_receipt(sequence, now)
        row = (after.state, int(after.closed), after.insurance_type, after.inbound_insurance_type,
               after.suspension_date, after.enrollment_date, after.balance_fen, after.fund_message_id, now_us)
        if before is None:
            conn.execute(
                "INSERT INTO cases (state, closed, insurance_type, inbound_insurance_type, suspension_date,"
                " enrollment_date, balance_fen, fund_message_id, updated_at, opened_at, transfer_id, outbound,"
                " inbound, applicant, person_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, now_us, after.transfer_id, after.outbound, after.inbound, after.applicant, after.person_key),
            )
        else:
            conn.execute(
                "UPDATE cases SET state = ?, closed = ?, insurance_type = ?, inbound_insurance_type = ?,"
                " suspension_date = ?, enrollment_date = ?, balance_fen = ?, fund_message_id = ?, updated_at = ?"
                " WHERE transfer_id = ?",
                (*row, after.transfer_id),
            )
        conn.execute(
            "INSERT INTO messages (sequence, message_id, transfer_id, kind, sender, receiver, created_at,"
            " accepted_at, fingerprint, ack_status, signed_message, receipt)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sequence, m.message_id, m.transfer_id, m.kind, m.sender, m.receiver, _us(m.created_at),
             now_us, m.fingerprint, m.ack_status, m.signed_message, receipt),
        )
        self._apply_effects(conn, m, decision, now_us)
        conn.executemany(
            "INSERT INTO case_stages (transfer_id, stage, outbound_province, inbound_province, started_at, deadline)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(after.transfer_id, str(s.stage), province(after.outbound), province(after.inbound), now_us,
              _us(s.deadline)) for s in stages.started],
        )
        finished: list[StageRecord] = []
        for stage in stages.finished:
            started_at, deadline = conn.execute(
                "UPDATE case_stages SET finished_at = ? WHERE transfer_id = ? AND stage = ? AND finished_at IS NULL"
                " RETURNING started_at, deadline", (now_us, after.transfer_id, str(stage)),
            ).fetchone()
            finished.append(StageRecord(stage, _time(started_at), _time(deadline), now))
        state = HELD if decision.hold_delivery else PENDING
        conn.executemany(
            "INSERT INTO deliveries (message_id, receiver, platform, transfer_id, sequence, accepted_at,"
            " state, visible_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(m.message_id, agency, platform, m.transfer_id, sequence, now_us, state, now_us)
             for platform, agency in m.deliveries],
        )
        return AcceptOutcome(receipt=receipt, sequence=sequence, replayed=False, outbound=after.outbound,
                             inbound=after.inbound, finished_stages=tuple(finished))

    @staticmethod
    def _apply_effects(conn: sqlite3.Connection, m: IncomingMessage, decision: Decision, now_us: int) -> None:
        if m.kind == envelope_pb2.MESSAGE_KIND_FUND_TRANSFER:
            conn.execute(
                "INSERT INTO fund_movements (transfer_id, message_id, amount_fen, status, accepted_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (m.transfer_id, m.message_id, m.fund_amount_fen, str(decision.fund_status), now_us, now_us),
            )
        elif decision.fund_status is not None:
            conn.execute("UPDATE fund_movements SET status = ?, updated_at = ? WHERE transfer_id = ?",
                         (str(decision.fund_status), now_us, m.transfer_id))
        if decision.release_message is not None:
            conn.execute("UPDATE deliveries SET state = ?, visible_at = ? WHERE message_id = ? AND state = ?",
                         (PENDING, now_us, decision.release_message, HELD))
        if decision.cancel_message is not None:
            conn.execute("UPDATE deliveries SET state = ? WHERE message_id = ? AND state = ?",
                         (CANCELLED, decision.cancel_message, HELD))

    async def claim_deliveries(
        self, platform: str, agencies: frozenset[str] | None, *, limit: int, lease: dt.timedelta,
        max_attempts: int, now: dt.datetime,
    ) -> list[ClaimedDelivery]:
        def claim(conn: sqlite3.Connection) -> list[ClaimedDelivery]:
            now_us = _us(now)
            where_agency = ""
            params: list[Any] = [platform, now_us]
            if agencies is not None:
                where_agency = f" AND d.receiver IN ({','.join('?' * len(agencies))})"
                params += sorted(agencies)
            # Only the oldest open delivery of each case is eligible: order within a case holds
            # even across redeliveries.
            rows = conn.execute(
                f"""SELECT d.message_id, d.receiver, d.transfer_id, d.attempts, m.signed_message, m.receipt
                    FROM deliveries d JOIN messages m ON m.message_id = d.message_id
                    WHERE d.platform = ? AND d.state IN ({PENDING}, {IN_FLIGHT}) AND d.visible_at <= ?
                      {where_agency}
                      AND NOT EXISTS (
                        SELECT 1 FROM deliveries e
                        WHERE e.platform = d.platform AND e.transfer_id = d.transfer_id
                          AND e.state IN ({PENDING}, {IN_FLIGHT}, {HELD}) AND e.sequence < d.sequence)
                    ORDER BY d.sequence LIMIT ?""",
                (*params, limit),
            ).fetchall()
            claimed = []
            visible_at = _us(now + lease)
            for message_id, receiver, transfer_id, attempts, signed, receipt in rows:
                key = (message_id, receiver)
                if attempts >= max_attempts:
                    conn.execute("UPDATE deliveries SET state = ? WHERE message_id = ? AND receiver = ?",
                                 (DEAD_LETTER, *key))
                    continue
                conn.execute(
                    "UPDATE deliveries SET state = ?, attempts = attempts + 1, visible_at = ?,"
                    " first_delivered_at = COALESCE(first_delivered_at, ?) WHERE message_id = ? AND receiver = ?",
                    (IN_FLIGHT, visible_at, now_us, *key),
                )
                claimed.append(ClaimedDelivery(message_id, transfer_id, signed, receipt, attempts + 1))
            return claimed

        return await self._submit(claim)

    async def ack_delivery(self, platform: str, message_id: str, now: dt.datetime) -> None:
        def ack(conn: sqlite3.Connection) -> None:
            updated = conn.execute(
                "UPDATE deliveries SET state = ?, acknowledged_at = COALESCE(acknowledged_at, ?)"
                " WHERE message_id = ? AND platform = ? AND state NOT IN (?, ?)",
                (ACKNOWLEDGED, _us(now), message_id, platform, HELD, CANCELLED),
            ).rowcount
            if not updated:
                raise NotFound(f"no delivery {message_id} for platform {platform}",
                               reason="DELIVERY_NOT_FOUND", metadata={"message_id": message_id})

        await self._submit(ack)

    async def get_case(self, transfer_id: str) -> CaseView | None:
        def read(conn: sqlite3.Connection) -> CaseView | None:
            case = _load_case(conn, transfer_id)
            if case is None:
                return None
            opened, updated = conn.execute(
                "SELECT opened_at, updated_at FROM cases WHERE transfer_id = ?", (transfer_id,)
            ).fetchone()
            rows = conn.execute(
                """SELECT m.message_id, m.kind, m.sender, m.receiver, m.sequence, m.created_at,
                          m.accepted_at, m.ack_status, MIN(d.state), MIN(d.attempts), MIN(d.first_delivered_at),
                          MAX(d.acknowledged_at)
                   FROM messages m JOIN deliveries d ON d.message_id = m.message_id
                   WHERE m.transfer_id = ? GROUP BY m.sequence ORDER BY m.sequence""",
                (transfer_id,),
            ).fetchall()
            views = [
                MessageView(
                    message_id=r[0], kind=r[1], sender=r[2], receiver=r[3], sequence=r[4],
                    created_at=_time(r[5]), accepted_at=_time(r[6]), ack_status=r[7],
                    delivery_state=r[8], delivery_attempts=r[9],
                    delivered_at=_opt_time(r[10]), acknowledged_at=_opt_time(r[11]),
                )
                for r in rows
            ]
            return CaseView(case=case, opened_at=_time(opened), updated_at=_time(updated), messages=views,
                            stages=_load_stages(conn, transfer_id))

        return await self._submit(read)

    async def list_cases(self, query: CaseQuery) -> list[CaseView]:
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
            args.append(_us(query.opened_from))
        if query.opened_before is not None:
            where.append("opened_at < ?")
            args.append(_us(query.opened_before))
        if query.deadline_between is not None:
            where.append("EXISTS (SELECT 1 FROM case_stages s WHERE s.transfer_id = cases.transfer_id"
                         " AND s.finished_at IS NULL AND s.deadline > ? AND s.deadline <= ?)")
            args += [_us(query.deadline_between[0]), _us(query.deadline_between[1])]
        if query.after is not None:
            where.append("(opened_at, transfer_id) > (?, ?)")
            args += [_us(query.after[0]), query.after[1]]
        sql = (f"SELECT transfer_id, opened_at, updated_at FROM cases WHERE {' AND '.join(where)}"
               " ORDER BY opened_at, transfer_id LIMIT ?")

        def read(conn: sqlite3.Connection) -> list[CaseView]:
            views = []
            for transfer_id, opened, updated in conn.execute(sql, (*args, query.limit)).fetchall():
                case = _load_case(conn, transfer_id)
                assert case is not None
                views.append(CaseView(case=case, opened_at=_time(opened), updated_at=_time(updated), messages=(),
                                      stages=_load_stages(conn, transfer_id)))
            return views

        return await self._submit(read)

    async def stage_counts(self, now: dt.datetime, due_soon_before: dt.datetime) -> list[StageCount]:
        def read(conn: sqlite3.Connection) -> list[StageCount]:
            return [
                StageCount(Stage(r[0]), r[1], r[2], r[3], r[4], r[5])
                for r in conn.execute(
                    "SELECT stage, outbound_province, inbound_province, COUNT(*), SUM(deadline <= ?),"
                    " SUM(deadline > ? AND deadline <= ?) FROM case_stages WHERE finished_at IS NULL"
                    " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
                    (_us(now), _us(now), _us(due_soon_before)),
                )
            ]

        return await self._submit(read)

    async def idle_cases(self, state: int, idle_since: dt.datetime, limit: int) -> list[CaseView]:
        def read(conn: sqlite3.Connection) -> list[str]:
            return [r[0] for r in conn.execute(
                "SELECT transfer_id FROM cases WHERE state = ? AND updated_at < ? ORDER BY updated_at LIMIT ?",
                (state, _us(idle_since), limit))]

        views = [await self.get_case(tid) for tid in await self._submit(read)]
        return [v for v in views if v is not None]

    async def receipt_of(self, message_id: str) -> bytes | None:
        def read(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT receipt FROM messages WHERE message_id = ?", (message_id,)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._submit(read)

    async def held_transfers(self) -> list[HeldTransfer]:
        def read(conn: sqlite3.Connection) -> list[HeldTransfer]:
            return [
                HeldTransfer(transfer_id=r[0], message_id=r[1], outbound=r[2], inbound=r[3], amount_fen=r[4],
                             held_since=_time(r[5]))
                for r in conn.execute(
                    "SELECT f.transfer_id, f.message_id, c.outbound, c.inbound, f.amount_fen, f.accepted_at"
                    " FROM fund_movements f JOIN cases c ON c.transfer_id = f.transfer_id"
                    " WHERE f.status = 'held' ORDER BY f.accepted_at"
                )
            ]

        return await self._submit(read)

    async def settlement(self, start: dt.datetime, end: dt.datetime) -> list[SettlementLine]:
        def read(conn: sqlite3.Connection) -> list[SettlementLine]:
            pairs: dict[tuple[str, str], dict[str, int]] = {}
            for out_p, in_p, status, amount, count in conn.execute(
                "SELECT substr(c.outbound, 1, 2), substr(c.inbound, 1, 2), f.status, SUM(f.amount_fen), COUNT(*)"
                " FROM fund_movements f JOIN cases c ON c.transfer_id = f.transfer_id"
                " WHERE f.accepted_at >= ? AND f.accepted_at < ? GROUP BY 1, 2, 3",
                (_us(start), _us(end)),
            ):
                totals = pairs.setdefault((out_p, in_p), {"transfers": 0})
                totals[status] = amount
                totals["transfers"] += count
            return [
                SettlementLine(
                    outbound_province=out_p, inbound_province=in_p,
                    sent_fen=sum(t.get(k, 0) for k in ("held", "sent", "credited", "rejected")),
                    credited_fen=t.get("credited", 0), held_fen=t.get("held", 0), rejected_fen=t.get("rejected", 0),
                    in_flight_fen=t.get("sent", 0), transfers=t["transfers"],
                )
                for (out_p, in_p), t in sorted(pairs.items())
            ]

        return await self._submit(read)

    async def delivery_stats(self) -> list[DeliveryStats]:
        def read(conn: sqlite3.Connection) -> list[DeliveryStats]:
            stats: dict[str, dict[str, Any]] = {}

            def entry(platform: str) -> dict[str, Any]:
                return stats.setdefault(platform, {"pending": 0, "in_flight": 0, "dead": 0, "oldest": None})

            for platform, state, count, oldest in conn.execute(
                f"SELECT platform, state, COUNT(*), MIN(accepted_at) FROM deliveries"
                f" WHERE state IN ({PENDING}, {IN_FLIGHT}) GROUP BY platform, state"
            ):
                e = entry(platform)
                e["pending" if state == PENDING else "in_flight"] = count
                e["oldest"] = oldest if e["oldest"] is None else min(e["oldest"], oldest)
            for platform, count in conn.execute(
                f"SELECT platform, COUNT(*) FROM deliveries WHERE state = {DEAD_LETTER} GROUP BY platform"
            ):
                entry(platform)["dead"] = count
            return [
                DeliveryStats(p, e["pending"], e["in_flight"], e["dead"], _opt_time(e["oldest"]))
                for p, e in sorted(stats.items())
            ]

        return await self._submit(read)


class _Index:
    """The rules' view of other cases, read inside the deciding transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def open_case_for(self, person_key: bytes, outbound: str) -> str | None:
        row = self._conn.execute(
            "SELECT transfer_id FROM cases WHERE person_key = ? AND outbound = ? AND closed = 0",
            (person_key, outbound),
        ).fetchone()
        return None if row is None else str(row[0])


def _load_case(conn: sqlite3.Connection, transfer_id: str) -> Case | None:
    row = conn.execute(
        "SELECT state, outbound, inbound, applicant, insurance_type, inbound_insurance_type, person_key,"
        " suspension_date, enrollment_date, balance_fen, fund_message_id FROM cases WHERE transfer_id = ?",
        (transfer_id,),
    ).fetchone()
    if row is None:
        return None
    outbound = row[1]
    refs = {
        message_id: MessageRef(kind, _side_of(kind, sender, outbound))
        for message_id, kind, sender in conn.execute(
            "SELECT message_id, kind, sender FROM messages WHERE transfer_id = ?", (transfer_id,)
        )
    }
    return Case(
        transfer_id=transfer_id, state=row[0], outbound=outbound, inbound=row[2], applicant=row[3],
        insurance_type=row[4], inbound_insurance_type=row[5], person_key=row[6], suspension_date=row[7],
        enrollment_date=row[8], balance_fen=row[9], fund_message_id=row[10], messages=refs,
    )


def _load_stages(conn: sqlite3.Connection, transfer_id: str) -> list[StageRecord]:
    return [
        StageRecord(Stage(r[0]), _time(r[1]), _time(r[2]), _opt_time(r[3]))
        for r in conn.execute(
            "SELECT stage, started_at, deadline, finished_at FROM case_stages WHERE transfer_id = ?"
            " ORDER BY started_at, rowid", (transfer_id,))
    ]


def _side_of(kind: int, sender: str, outbound: str) -> Side:
    if kind == envelope_pb2.MESSAGE_KIND_REVIEW_DECISION:
        return Side.REVIEWER
    if kind == envelope_pb2.MESSAGE_KIND_CASE_EXPIRED:
        return Side.GATEWAY
    return Side.OUTBOUND if sender == outbound else Side.INBOUND


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the caller went away; the write itself stands
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)

"""The store under benchmark, behind what the harness needs of it: a fresh store for each gateway
process, a bulk loader for the scale run, and the fund-movement audit of the replay storm.

Only SQLite exists. The loader writes synthetic rows straight into the schema that the store's
own migrations created, in a few big transactions (the RPC path would take hours for a million
messages). It names only the columns it fills and reads the rest from `PRAGMA table_info`, so a
column added later with a default costs nothing and one without a default gets a zero of its
type; tables it does not know stay empty, except the log's head (if the store keeps one), which
moves past the loaded rows so that the next accepted message follows them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from gateway.store.sqlite import SQLiteConfig, SQLiteStore
from mitransfer.v1 import envelope_pb2, tracking_pb2

FUND_TRANSFER = envelope_pb2.MESSAGE_KIND_FUND_TRANSFER
_CHUNK_CASES = 20_000  # cases per loader transaction (~120,000 messages)


@dataclass(frozen=True)
class Template:
    """A real message and receipt of one kind: synthetic rows copy their sizes and bytes."""

    kind: envelope_pb2.MessageKind.ValueType
    from_outbound: bool  # sent by the case's outbound agency
    signed_message: bytes
    receipt: bytes
    ack_status: int = 0


@dataclass(frozen=True)
class Route:
    """Two agencies of a synthetic case and the platforms they belong to."""

    outbound: str
    outbound_platform: str
    inbound: str
    inbound_platform: str


@dataclass(frozen=True)
class LoadReport:
    messages: int
    cases: int
    seconds: float
    file_bytes: int


@dataclass(frozen=True)
class FundAudit:
    cases_checked: int       # transfer ids whose fund transfer was replayed
    double_movements: int    # cases with more than one fund movement or accepted fund transfer
    missing_movements: int   # replayed cases with no fund movement at all


class BenchStore(Protocol):
    """One kind of store, as the benchmark drives it."""

    name: str

    def fresh(self, label: str) -> dict[str, str]:
        """A new, empty store: the keys the gateway process's spec needs to open it."""

    async def populate(self, location: dict[str, str], messages: int, templates: Sequence[Template],
                       routes: Sequence[Route]) -> LoadReport:
        """Write about `messages` messages of closed cases (with their deliveries, acknowledged,
        and fund movements) into the store at `location`."""

    def audit_funds(self, location: dict[str, str], transfer_ids: Sequence[str]) -> FundAudit:
        """Count double and missing fund movements for these cases (the gateway must be stopped)."""


def open_store(url: str, workdir: Path) -> BenchStore:
    """The store named by `url` ("sqlite": a temporary SQLite file per gateway process).

    Raises ValueError for any other store.
    """
    if url.split(":", 1)[0] == "sqlite":
        return SQLiteBenchStore(workdir)
    raise ValueError(f"unknown store {url!r}: only 'sqlite' is implemented")


class SQLiteBenchStore:
    name = "sqlite"

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir

    def fresh(self, label: str) -> dict[str, str]:
        return {"database": str(self._workdir / f"{label}.db")}

    async def populate(self, location: dict[str, str], messages: int, templates: Sequence[Template],
                       routes: Sequence[Route]) -> LoadReport:
        path = Path(location["database"])
        started = time.perf_counter()
        store = SQLiteStore(SQLiteConfig(path=path), lambda: dt.datetime.now(dt.UTC))
        await store.open()  # the store's own migrations create the schema
        await store.close()
        cases = await asyncio.to_thread(_bulk_load, path, messages, templates, routes)
        return LoadReport(messages=cases * len(templates), cases=cases, seconds=time.perf_counter() - started,
                          file_bytes=path.stat().st_size)

    def audit_funds(self, location: dict[str, str], transfer_ids: Sequence[str]) -> FundAudit:
        conn = sqlite3.connect(location["database"])
        try:
            conn.execute("CREATE TEMP TABLE replayed (transfer_id TEXT PRIMARY KEY)")
            conn.executemany("INSERT OR IGNORE INTO replayed VALUES (?)", [(t,) for t in transfer_ids])
            double = conn.execute(
                "SELECT COUNT(*) FROM replayed r WHERE"
                " (SELECT COUNT(*) FROM fund_movements f WHERE f.transfer_id = r.transfer_id) > 1"
                " OR (SELECT COUNT(*) FROM messages m WHERE m.transfer_id = r.transfer_id AND m.kind = ?) > 1",
                (FUND_TRANSFER,),
            ).fetchone()[0]
            # Over the whole store too: no case anywhere may have moved money twice.
            double += conn.execute(
                "SELECT COUNT(*) FROM (SELECT transfer_id FROM fund_movements GROUP BY transfer_id HAVING COUNT(*) > 1"
                " EXCEPT SELECT transfer_id FROM replayed)"
            ).fetchone()[0]
            missing = conn.execute(
                "SELECT COUNT(*) FROM replayed r WHERE NOT EXISTS"
                " (SELECT 1 FROM fund_movements f WHERE f.transfer_id = r.transfer_id)"
            ).fetchone()[0]
            checked = conn.execute("SELECT COUNT(*) FROM replayed").fetchone()[0]
        finally:
            conn.close()
        return FundAudit(cases_checked=checked, double_movements=double, missing_movements=missing)


class _Table:
    """Inserts into one table: the given columns, plus a zero for any other NOT NULL column that
    has no default (a column the loader does not know about)."""

    _ZEROS: ClassVar[dict[str, object]] = {"INTEGER": 0, "REAL": 0.0, "TEXT": "", "BLOB": b""}

    def __init__(self, conn: sqlite3.Connection, name: str, columns: Sequence[str]) -> None:
        info = conn.execute(f"PRAGMA table_info({name})").fetchall()  # cid, name, type, notnull, default, pk
        if not info:
            raise RuntimeError(f"the store has no table {name}: the bench loader needs updating")
        existing = {row[1] for row in info}
        self.keep = [i for i, column in enumerate(columns) if column in existing]
        names = [columns[i] for i in self.keep]
        self.extra = [self._ZEROS.get(row[2].upper(), 0) for row in info
                      if row[3] and row[4] is None and not row[5] and row[1] not in columns]
        names += [row[1] for row in info if row[3] and row[4] is None and not row[5] and row[1] not in columns]
        self.sql = f"INSERT INTO {name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        self._conn = conn

    def insert(self, rows: Iterator[tuple[Any, ...]]) -> None:
        extra = tuple(self.extra)
        keep = self.keep
        self._conn.executemany(self.sql, (tuple(row[i] for i in keep) + extra for row in rows))


def _bulk_load(path: Path, messages: int, templates: Sequence[Template], routes: Sequence[Route]) -> int:
    """Closed (completed) cases of `len(templates)` messages each until `messages` are written."""
    per_case = len(templates)
    total_cases = max(1, -(-messages // per_case))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # A throwaway file: no journal and no fsync while loading, one fsync of the file at the end.
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-524288")  # 512 MiB: index pages stay in memory while loading
        cases_t = _Table(conn, "cases", (
            "transfer_id", "state", "closed", "outbound", "inbound", "applicant", "insurance_type",
            "inbound_insurance_type", "person_key", "suspension_date", "enrollment_date", "balance_fen",
            "fund_message_id", "opened_at", "updated_at"))
        messages_t = _Table(conn, "messages", (
            "sequence", "message_id", "transfer_id", "kind", "sender", "receiver", "created_at", "accepted_at",
            "fingerprint", "ack_status", "signed_message", "receipt"))
        funds_t = _Table(conn, "fund_movements", (
            "transfer_id", "message_id", "amount_fen", "status", "accepted_at", "updated_at"))
        deliveries_t = _Table(conn, "deliveries", (
            "message_id", "receiver", "platform", "transfer_id", "sequence", "accepted_at", "state", "attempts",
            "visible_at", "first_delivered_at", "acknowledged_at"))
        sequence = (conn.execute("SELECT COALESCE(MAX(sequence), 0) FROM messages").fetchone()[0])
        # Cases accepted over the past year, oldest first, a few seconds apart.
        now_us = int(time.time() * 1e6)
        step_us = max(1, 365 * 86_400_000_000 // total_cases)
        first_us = now_us - total_cases * step_us
        for chunk_start in range(0, total_cases, _CHUNK_CASES):
            chunk = range(chunk_start, min(total_cases, chunk_start + _CHUNK_CASES))
            case_rows, message_rows, fund_rows, delivery_rows = [], [], [], []
            for i in chunk:
                transfer_id = str(uuid.uuid4())
                route = routes[i % len(routes)]
                outbound, inbound = route.outbound, route.inbound
                opened = first_us + i * step_us
                balance = 100 + (i * 7919) % 1_000_000
                fund_id = ""
                for j, t in enumerate(templates):
                    sequence += 1
                    message_id = str(uuid.uuid4())
                    at = opened + j * 1_000_000
                    sender, receiver = (outbound, inbound) if t.from_outbound else (inbound, outbound)
                    platform = route.inbound_platform if t.from_outbound else route.outbound_platform
                    message_rows.append((sequence, message_id, transfer_id, t.kind, sender, receiver, at, at,
                                         hashlib.sha256(message_id.encode()).digest(), t.ack_status,
                                         t.signed_message, t.receipt))
                    delivery_rows.append((message_id, receiver, platform, transfer_id, sequence, at,
                                          tracking_pb2.DELIVERY_STATE_ACKNOWLEDGED, 1, at, at + 50_000,
                                          at + 100_000))
                    if t.kind == FUND_TRANSFER:
                        fund_id = message_id
                        fund_rows.append((transfer_id, message_id, balance, "credited", at, at + 2_000_000))
                closed_at = opened + per_case * 1_000_000
                case_rows.append((transfer_id, tracking_pb2.CASE_STATE_COMPLETED, 1, outbound, inbound, outbound,
                                  310, 310, os.urandom(32), "2025-01-01", "2025-01-02", balance,
                                  fund_id or None, opened, closed_at))
            conn.execute("BEGIN")
            cases_t.insert(iter(case_rows))
            messages_t.insert(iter(message_rows))
            funds_t.insert(iter(fund_rows))
            deliveries_t.insert(iter(delivery_rows))
            conn.execute("COMMIT")
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'log_head'").fetchone():
            conn.execute("UPDATE log_head SET sequence = ?", (sequence,))  # the log goes on after the loaded rows
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # on disk before anything is measured, so no write-back competes with it
    finally:
        os.close(fd)
    return total_cases


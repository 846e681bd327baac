"""The store under benchmark, behind what the harness needs of it: a fresh store for each gateway
process, a bulk loader for the scale run, and the fund-movement audit of the replay storm.

SQLite (a file per gateway process) or PostgreSQL (a schema per gateway process, dropped at the
end of the run). Both loaders write the same synthetic rows straight into the schema that the
store's own migrations created, in a few big transactions (the RPC path would take hours for a
million messages): SQLite by `executemany`, PostgreSQL by `COPY`. They name only the columns they
fill and read the rest from the catalogue, so a column added later with a default costs nothing
and one without a default gets a zero of its type; tables they do not know stay empty, except the
log's head, which moves past the loaded rows so that the next accepted message follows them, and
the fund totals, added up from the loaded movements as the migration that made them does.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import math
import os
import re
import secrets
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql as pgsql

from gateway.app.progress import Progress
from gateway.core.sla import Sla
from gateway.core.workdays import WorkingCalendar
from gateway.devtools.bench.servers import postgres_cpu_seconds
from gateway.store.migrations import FUND_TOTALS_FROM_MOVEMENTS
from gateway.store.postgres import PostgresConfig, PostgresStore
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
    file_bytes: int  # on disk: the SQLite file, or the PostgreSQL schema's tables and indexes


@dataclass(frozen=True)
class FundAudit:
    cases_checked: int       # transfer ids whose fund transfer was replayed
    double_movements: int    # cases with more than one fund movement or accepted fund transfer
    missing_movements: int   # replayed cases with no fund movement at all


class BenchStore(Protocol):
    """One kind of store, as the benchmark drives it."""

    name: str
    replicas: bool  # several gateway processes may share one store

    def fresh(self, label: str) -> dict[str, str]:
        """A new, empty store: the keys the gateway process's spec needs to open it."""

    async def populate(self, location: dict[str, str], messages: int, templates: Sequence[Template],
                       routes: Sequence[Route]) -> LoadReport:
        """Write about `messages` messages of closed cases (with their deliveries, acknowledged,
        and fund movements) into the store at `location`."""

    def audit_funds(self, location: dict[str, str], transfer_ids: Sequence[str]) -> FundAudit:
        """Count double and missing fund movements for these cases (the gateway must be stopped)."""

    def version(self) -> str:
        """The engine's version, for the report."""

    def engine_cpu_seconds(self) -> float:
        """CPU time of the engine's own processes so far; NaN when it runs inside the gateway."""

    def cleanup(self) -> None:
        """Remove every store `fresh` handed out that outlives the run's temporary folder."""


def open_store(url: str, workdir: Path) -> BenchStore:
    """The store named by `url`: "sqlite" (a temporary file per gateway process) or a
    postgresql:// URL (a new schema per gateway process on that database).

    Raises ValueError for any other store.
    """
    if url.split(":", 1)[0] == "sqlite":
        return SQLiteBenchStore(workdir)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresBenchStore(url)
    raise ValueError(f"unknown store {url!r}: 'sqlite' or a postgresql:// URL")


def redact(url: str) -> str:
    """The URL without its password, fit for a report."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


class SQLiteBenchStore:
    name = "sqlite"
    replicas = False  # one writer process per file

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir

    def fresh(self, label: str) -> dict[str, str]:
        return {"database": str(self._workdir / f"{label}.db")}

    async def populate(self, location: dict[str, str], messages: int, templates: Sequence[Template],
                       routes: Sequence[Route]) -> LoadReport:
        path = Path(location["database"])
        started = time.perf_counter()
        store = SQLiteStore(SQLiteConfig(path=path), lambda: dt.datetime.now(dt.UTC), Sla(WorkingCalendar()))
        await store.open()  # the store's own migrations create the schema
        await store.close()
        with Progress.start("messages loaded", total=messages) as progress:
            cases = await asyncio.to_thread(_sqlite_load, path, messages, templates, routes, progress)
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
                " OR (SELECT COUNT(*) FROM cases c JOIN messages m ON m.case_opened_at = c.opened_at"
                " AND m.transfer_id = c.transfer_id WHERE c.transfer_id = r.transfer_id AND m.kind = ?) > 1",
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

    def version(self) -> str:
        return sqlite3.sqlite_version

    def engine_cpu_seconds(self) -> float:
        return math.nan  # SQLite runs on the gateway's own threads: its CPU is the gateway's

    def cleanup(self) -> None:
        pass  # the files live in the run's temporary folder


class PostgresBenchStore:
    """A schema of its own per gateway process (two replicas share one), all dropped by `cleanup`."""

    name = "postgresql"
    replicas = True

    def __init__(self, url: str) -> None:
        self._url = url
        self._run = secrets.token_hex(3)
        self._schemas: list[str] = []

    def fresh(self, label: str) -> dict[str, str]:
        schema = f"bench_{re.sub(r'[^a-z0-9_]', '_', label.lower())}_{self._run}"
        self._schemas.append(schema)
        return {"store": self._url, "schema": schema}

    def _connect(self, schema: str) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self._url, autocommit=True, connect_timeout=5,
                               options=f"-c search_path={schema}")

    async def populate(self, location: dict[str, str], messages: int, templates: Sequence[Template],
                       routes: Sequence[Route]) -> LoadReport:
        schema = location["schema"]
        started = time.perf_counter()
        store = PostgresStore(PostgresConfig(url=self._url, schema=schema), lambda: dt.datetime.now(dt.UTC),
                              Sla(WorkingCalendar()))
        await store.open()  # the store's own migrations create the schema
        await store.close()
        with Progress.start("messages loaded", total=messages) as progress:
            cases = await asyncio.to_thread(self._load, schema, messages, templates, routes, progress)
        with self._connect(schema) as conn:
            row = conn.execute("SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
                               " JOIN pg_namespace n ON n.oid = c.relnamespace"
                               " WHERE n.nspname = %s AND c.relkind = 'r'", (schema,)).fetchone()
        return LoadReport(messages=cases * len(templates), cases=cases, seconds=time.perf_counter() - started,
                          file_bytes=int(row[0]) if row else 0)

    def _load(self, schema: str, messages: int, templates: Sequence[Template], routes: Sequence[Route],
              progress: Progress) -> int:
        with self._connect(schema) as conn:
            conn.execute("SET synchronous_commit = off")  # one durable checkpoint at the end instead
            with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
                # The rows are consistent by construction: skip the foreign-key triggers' lookup per row.
                conn.execute("SET session_replication_role = replica")
            tables = {name: _Columns(name, columns, self._columns_of(conn, schema, name))
                      for name, columns in _COLUMNS.items()}
            row = conn.execute("SELECT COALESCE(MAX(sequence), 0) FROM messages").fetchone()
            first = int(row[0]) if row else 0
            chunks = _synthetic_rows(messages, templates, routes, first)
            sequence = 0
            for chunk, last in chunks:
                sequence = last
                progress.update(last - first)
                with conn.transaction(), conn.cursor() as cursor:
                    for name, table in tables.items():
                        statement = pgsql.SQL("COPY {} ({}) FROM STDIN").format(
                            pgsql.Identifier(name), pgsql.SQL(", ").join(map(pgsql.Identifier, table.names)))
                        with cursor.copy(statement) as copy:
                            for values in table.rows(chunk[name]):
                                copy.write_row(values)
            conn.execute("UPDATE log_head SET sequence = %s", (sequence,))  # the log goes on after the rows
            conn.execute("DELETE FROM fund_totals")
            conn.execute(FUND_TOTALS_FROM_MOVEMENTS)
            # Statistics and the visibility map now, so that autovacuum does not catch up mid-measurement;
            # the checkpoint puts everything on disk before anything is measured.
            for name in tables:
                conn.execute(pgsql.SQL("VACUUM ANALYZE {}").format(pgsql.Identifier(name)))
            conn.execute("CHECKPOINT")
        return case_count(messages, templates)

    @staticmethod
    def _columns_of(conn: psycopg.Connection[tuple[Any, ...]], schema: str, table: str) -> list[_Column]:
        rows = conn.execute(
            "SELECT column_name, data_type, is_nullable = 'NO', column_default IS NOT NULL"
            " FROM information_schema.columns WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (schema, table)).fetchall()
        return [_Column(name, kind, bool(not_null), bool(default), False) for name, kind, not_null, default in rows]

    def audit_funds(self, location: dict[str, str], transfer_ids: Sequence[str]) -> FundAudit:
        with self._connect(location["schema"]) as conn:
            row = conn.execute(
                "WITH r AS (SELECT DISTINCT unnest(%s::text[]) AS transfer_id),"
                " doubled AS (SELECT transfer_id FROM fund_movements GROUP BY transfer_id HAVING COUNT(*) > 1)"
                " SELECT (SELECT COUNT(*) FROM r),"
                " (SELECT COUNT(*) FROM r WHERE"
                "   (SELECT COUNT(*) FROM fund_movements f WHERE f.transfer_id = r.transfer_id) > 1"
                "   OR (SELECT COUNT(*) FROM cases c JOIN messages m ON m.case_opened_at = c.opened_at"
                "       AND m.transfer_id = c.transfer_id WHERE c.transfer_id = r.transfer_id AND m.kind = %s) > 1)"
                # Over the whole store too: no case anywhere may have moved money twice.
                " + (SELECT COUNT(*) FROM (SELECT transfer_id FROM doubled EXCEPT SELECT transfer_id FROM r) d),"
                " (SELECT COUNT(*) FROM r WHERE NOT EXISTS"
                "   (SELECT 1 FROM fund_movements f WHERE f.transfer_id = r.transfer_id))",
                (list(transfer_ids), FUND_TRANSFER)).fetchone()
        assert row is not None
        return FundAudit(cases_checked=int(row[0]), double_movements=int(row[1]), missing_movements=int(row[2]))

    def version(self) -> str:
        with psycopg.connect(self._url, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def engine_cpu_seconds(self) -> float:
        return postgres_cpu_seconds()

    def cleanup(self) -> None:
        """Drop the run's schemas, waiting out a server that is restarting (up to a minute)."""
        deadline = time.monotonic() + 60.0
        while self._schemas:
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=5) as conn:
                    for schema in list(self._schemas):
                        conn.execute(pgsql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(pgsql.Identifier(schema)))
                        self._schemas.remove(schema)
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)


# The columns each loader fills, in the order `_synthetic_rows` gives their values.
_COLUMNS: dict[str, tuple[str, ...]] = {
    "cases": ("transfer_id", "state", "closed", "outbound", "inbound", "applicant", "insurance_type",
              "inbound_insurance_type", "person_key", "suspension_date", "enrollment_date", "balance_fen",
              "fund_message_id", "opened_at", "updated_at"),
    "messages": ("sequence", "message_id", "transfer_id", "kind", "sender", "receiver", "created_at", "accepted_at",
                 "fingerprint", "ack_status", "signed_message", "receipt", "case_opened_at"),
    "fund_movements": ("transfer_id", "message_id", "amount_fen", "status", "accepted_at", "updated_at"),
    "deliveries": ("sequence", "receiver", "platform", "transfer_id", "accepted_at", "state",
                   "attempts", "visible_at", "first_delivered_at", "acknowledged_at"),
}
Rows = list[tuple[Any, ...]]


@dataclass(frozen=True)
class _Column:
    name: str
    type: str
    not_null: bool
    has_default: bool
    rowid: bool  # SQLite's INTEGER PRIMARY KEY: filled by the engine


class _Columns:
    """One table as a loader fills it: the given columns it has, plus a zero for any other NOT NULL
    column without a default (a column the loader does not know about)."""

    def __init__(self, table: str, columns: Sequence[str], info: Sequence[_Column]) -> None:
        if not info:
            raise RuntimeError(f"the store has no table {table}: the bench loader needs updating")
        existing = {c.name for c in info}
        self.keep = [i for i, column in enumerate(columns) if column in existing]
        unknown = [c for c in info if c.not_null and not c.has_default and not c.rowid and c.name not in columns]
        self.names = [columns[i] for i in self.keep] + [c.name for c in unknown]
        self.extra = tuple(_zero(c.type) for c in unknown)

    def rows(self, rows: Rows) -> Iterator[tuple[Any, ...]]:
        keep, extra = self.keep, self.extra
        return (tuple(row[i] for i in keep) + extra for row in rows)


def _zero(column_type: str) -> object:
    kind = column_type.upper()
    if "INT" in kind:
        return 0
    if any(word in kind for word in ("REAL", "DOUBLE", "NUMERIC", "FLOAT")):
        return 0.0
    if "BLOB" in kind or "BYTEA" in kind:
        return b""
    if "BOOL" in kind:
        return False
    return ""


def case_count(messages: int, templates: Sequence[Template]) -> int:
    """Cases `_synthetic_rows` writes for about `messages` messages: whole cases, at least one."""
    return max(1, -(-messages // len(templates)))


def _synthetic_rows(messages: int, templates: Sequence[Template], routes: Sequence[Route],
                    sequence: int) -> Iterator[tuple[dict[str, Rows], int]]:
    """Closed (completed) cases of `len(templates)` messages each, accepted over the past year,
    oldest first; in chunks of rows per table, each with the last sequence it used."""
    per_case = len(templates)
    total_cases = case_count(messages, templates)
    now_us = int(time.time() * 1e6)
    step_us = max(1, 365 * 86_400_000_000 // total_cases)
    first_us = now_us - total_cases * step_us
    for chunk_start in range(0, total_cases, _CHUNK_CASES):
        chunk: dict[str, Rows] = {name: [] for name in _COLUMNS}
        case_rows, message_rows = chunk["cases"], chunk["messages"]
        fund_rows, delivery_rows = chunk["fund_movements"], chunk["deliveries"]
        for i in range(chunk_start, min(total_cases, chunk_start + _CHUNK_CASES)):
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
                                     t.signed_message, t.receipt, opened))
                delivery_rows.append((sequence, receiver, platform, transfer_id, at,
                                      tracking_pb2.DELIVERY_STATE_ACKNOWLEDGED, 1, at, at + 50_000, at + 100_000))
                if t.kind == FUND_TRANSFER:
                    fund_id = message_id
                    fund_rows.append((transfer_id, message_id, balance, "credited", at, at + 2_000_000))
            closed_at = opened + per_case * 1_000_000
            case_rows.append((transfer_id, tracking_pb2.CASE_STATE_COMPLETED, 1, outbound, inbound, outbound,
                              310, 310, os.urandom(32), "2025-01-01", "2025-01-02", balance,
                              fund_id or None, opened, closed_at))
        yield chunk, sequence


def _sqlite_load(path: Path, messages: int, templates: Sequence[Template], routes: Sequence[Route],
                 progress: Progress) -> int:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # A throwaway file: no journal and no fsync while loading, one fsync of the file at the end.
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-524288")  # 512 MiB: index pages stay in memory while loading
        tables = {}
        for name, columns in _COLUMNS.items():
            info = conn.execute(f"PRAGMA table_info({name})").fetchall()  # cid, name, type, notnull, default, pk
            table = _Columns(name, columns, [_Column(r[1], r[2], bool(r[3]), r[4] is not None, bool(r[5]))
                                             for r in info])
            statement = f"INSERT INTO {name} ({', '.join(table.names)}) VALUES ({', '.join('?' * len(table.names))})"
            tables[name] = (table, statement)
        first = conn.execute("SELECT COALESCE(MAX(sequence), 0) FROM messages").fetchone()[0]
        sequence = first
        for chunk, last in _synthetic_rows(messages, templates, routes, first):
            sequence = last
            progress.update(last - first)
            conn.execute("BEGIN")
            for name, (table, statement) in tables.items():
                conn.executemany(statement, table.rows(chunk[name]))
            conn.execute("COMMIT")
        conn.execute("UPDATE log_head SET sequence = ?", (sequence,))  # the log goes on after the loaded rows
        conn.execute("DELETE FROM fund_totals")
        conn.execute(FUND_TOTALS_FROM_MOVEMENTS)
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # on disk before anything is measured, so no write-back competes with it
    finally:
        os.close(fd)
    return case_count(messages, templates)

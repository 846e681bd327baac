"""SQLite store (the embedded default): WAL, synchronous=FULL, one writer thread, group commit.

Every write is a job run on one dedicated thread that owns the writing connection. The thread
takes all jobs queued at that moment, runs them in one transaction (a job that raises after
writing has the batch run again with a SAVEPOINT around each job, so it is rolled back alone),
then commits once and answers every caller: many accepts share one fsync,
and no caller hears of its write before the commit that holds it. Reads (tracking, reports, the
monitor's gauges) run on a second, read-only connection on a thread of their own: WAL lets them
see every committed write without ever holding up the writer. The SQL itself is `gateway.store.sql`,
shared with the PostgreSQL store.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.core.errors import StoreUnavailable
from gateway.core.settings import setting
from gateway.core.sla import Sla
from gateway.core.workdays import WorkingCalendar
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
    SettlementLine,
    StageCount,
    sql,
)
from gateway.store.sql import MIGRATIONS, Fetch, Steps

T = TypeVar("T")



@dataclass(frozen=True)
class SQLiteConfig:
    path: Path = setting(doc="The SQLite database file (one gateway process; its folder is created).",
                         key="sqlite", example='"/var/lib/transfer-gateway/gateway.db"')
    batch_max: int = 256        # most jobs committed together
    busy_timeout_ms: int = 5000


def _exclusive(path: Path) -> int:
    """Lock `path` for this process: an exclusive `flock` on the side file `<path>.lock`, which
    holds the owner's pid. SQLite's own locks allow a second writer process to wait its turn;
    two gateways on one file would each believe their single writer thread sees every write.
    A side file (not `locking_mode=EXCLUSIVE`) leaves WAL and the read-only connection as they are.
    The lock goes with the descriptor: a killed process never leaves a stale lock behind.

    Raises StoreUnavailable naming the file and the pid holding it.
    """
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 16, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise StoreUnavailable(
            f"SQLite store {path} is in use by another process" + (f" (pid {holder})" if holder.isdigit() else "")
            + "; one gateway process per SQLite file (PostgreSQL for several)", reason="STORE_UNAVAILABLE") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@dataclass
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]


def run_steps(conn: sqlite3.Connection, steps: Steps[T]) -> T:
    """Drive one `gateway.store.sql` operation on a connection already inside a transaction."""
    result: Any = None
    try:
        while True:
            q = steps.send(result)
            result = None
            if q.fetch in (Fetch.LOCK_CASE, Fetch.WAKE):  # one writer, one process: nothing to do
                pass
            elif q.fetch is Fetch.MANY:
                if len(q.params) == 1:  # the usual case (one delivery, one stage): no executemany setup
                    conn.execute(q.sql, q.params[0])
                elif q.params:
                    conn.executemany(q.sql, q.params)
            else:
                cursor = conn.execute(q.sql, q.params)
                result = (cursor.fetchone() if q.fetch is Fetch.ONE else cursor.rowcount
                          if q.fetch is Fetch.ROWCOUNT else cursor.fetchall())
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


class _PartialWrite(Exception):
    """A job failed after it had written: only rolling the batch back undoes its writes."""


class SQLiteStore:
    """The `Store` port on one SQLite file. One process at a time may open a file."""

    def __init__(self, config: SQLiteConfig, clock: Callable[[], dt.datetime], sla: Sla | None = None) -> None:
        self._config = config
        self._clock = clock
        self._sla = sla or Sla(WorkingCalendar())
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: sqlite3.Connection | None = None
        self._reads: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock: int | None = None  # descriptor of the held lock file

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Take the file (see `_exclusive`), migrate it, start the writer and the reader.

        Raises StoreUnavailable naming the file: held by another process, or cannot be opened.
        """
        try:
            self._config.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = _exclusive(self._config.path)
        except OSError as exc:
            raise StoreUnavailable(f"cannot open SQLite store {self._config.path}: {exc.strerror or exc}",
                                   reason="STORE_UNAVAILABLE") from exc
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="sqlite-writer", daemon=True)
        self._thread.start()
        try:
            await ready
        except BaseException:
            self._thread = None
            self._release_lock()
            raise
        self._reads = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-reader")
        self._reader = await self._loop.run_in_executor(self._reads, self._connect_reader)

    async def close(self) -> None:
        if self._reads is not None:
            reader, reads = self._reader, self._reads
            self._reader = self._reads = None
            if reader is not None:
                await asyncio.get_running_loop().run_in_executor(reads, reader.close)
            reads.shutdown(wait=True)
        if self._thread is None:
            return
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the lock
            self._lock = None

    def _connect_reader(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._config.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA query_only=ON")
        conn.execute(f"PRAGMA busy_timeout={self._config.busy_timeout_ms}")
        return conn

    def _read_now(self, steps: Steps[T]) -> T:
        """One read in one snapshot, on the reader thread."""
        assert self._reader is not None
        try:
            self._reader.execute("BEGIN")
            try:
                return run_steps(self._reader, steps)
            finally:
                self._reader.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"store error: {exc}", reason="STORE_UNAVAILABLE") from exc

    async def _read(self, steps: Steps[T]) -> T:
        if self._reads is None or self._loop is None:
            raise StoreUnavailable("store is not open", reason="STORE_UNAVAILABLE")
        return await self._loop.run_in_executor(self._reads, self._read_now, steps)

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
            error = StoreUnavailable(f"cannot open SQLite store {self._config.path}: {exc}", reason="STORE_UNAVAILABLE")
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
            try:
                self._run_batch(conn, loop, batch)
            except BaseException as exc:  # never leave callers waiting on a dead writer
                failure = StoreUnavailable(f"store writer failed: {exc}", reason="STORE_UNAVAILABLE")
                failed: list[tuple[_Job, Any, BaseException | None]] = [(job, None, failure) for job in batch]
                loop.call_soon_threadsafe(_settle_all, failed)
                if not isinstance(exc, Exception):
                    raise
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                results = _run_jobs(conn, batch, savepoints=False)
            except _PartialWrite:
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                results = _run_jobs(conn, batch, savepoints=True)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failure = StoreUnavailable(f"commit failed: {exc}", reason="STORE_UNAVAILABLE")
            results = [(job, None, failure) for job in batch]
        loop.call_soon_threadsafe(_settle_all, results)  # one wake-up of the event loop per batch

    async def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None or self._loop is None or not self._thread.is_alive():
            raise StoreUnavailable("store is not open", reason="STORE_UNAVAILABLE")
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put(_Job(fn, future))
        return await future

    # -- the port ----------------------------------------------------------------------------

    async def _steps(self, operation: Callable[[], Steps[T]]) -> T:
        """Run `operation()` as a write job; a batch that must be rolled back runs it again."""
        return await self._submit(lambda conn: run_steps(conn, operation()))

    def on_wake(self, callback: Callable[[str], None]) -> None:
        """One process owns the file: the gateway's own notifications are all there is."""

    async def accept(self, message: IncomingMessage, decide: Decide, make_receipt: MakeReceipt) -> AcceptOutcome:
        return await self._steps(lambda: sql.accept(message, decide, make_receipt, self._clock, self._sla))

    async def claim_deliveries(
        self, platform: str, agencies: frozenset[str] | None, *, limit: int, lease: dt.timedelta,
        max_attempts: int, now: dt.datetime,
    ) -> list[ClaimedDelivery]:
        return await self._steps(lambda: sql.claim_deliveries(platform, agencies, limit=limit, lease=lease,
                                                      max_attempts=max_attempts, now=now, lock_rows=""))

    async def ack_delivery(self, platform: str, message_id: str, now: dt.datetime) -> None:
        await self._steps(lambda: sql.ack_delivery(platform, message_id, now))

    async def get_case(self, transfer_id: str) -> CaseView | None:
        return await self._read(sql.get_case(transfer_id))

    async def idle_cases(self, state: int, idle_since: dt.datetime, limit: int) -> list[CaseView]:
        return await self._read(sql.idle_cases(state, idle_since, limit))

    async def receipt_of(self, message_id: str) -> bytes | None:
        return await self._read(sql.receipt_of(message_id))

    async def held_transfers(self) -> list[HeldTransfer]:
        return await self._read(sql.held_transfers())

    async def settlement(self, start: dt.datetime, end: dt.datetime) -> list[SettlementLine]:
        return await self._read(sql.settlement(start, end))

    async def fund_totals(self) -> list[SettlementLine]:
        return await self._read(sql.fund_totals())

    async def delivery_stats(self) -> list[DeliveryStats]:
        return await self._read(sql.delivery_stats())

    async def list_cases(self, query: CaseQuery) -> list[CaseView]:
        return await self._read(sql.list_cases(query))

    async def stage_counts(self, now: dt.datetime, due_soon_before: dt.datetime) -> list[StageCount]:
        return await self._read(sql.stage_counts(now, due_soon_before))


def _run_jobs(conn: sqlite3.Connection, batch: list[_Job], *, savepoints: bool
              ) -> list[tuple[_Job, Any, BaseException | None]]:
    """Run a batch's jobs in the open transaction, each one's outcome kept for its caller.

    Without savepoints (the fast path), a job that fails before writing anything, as a refused
    message does, leaves nothing to undo; one that fails after writing raises _PartialWrite, and
    the caller rolls the batch back and runs it again with a savepoint around every job. An error
    after which SQLite has rolled the whole transaction back fails the whole batch: the jobs after
    it would otherwise run in autocommit, each statement committed on its own.
    """
    results: list[tuple[_Job, Any, BaseException | None]] = []
    for job in batch:
        if savepoints:
            conn.execute("SAVEPOINT job")
        changes = conn.total_changes
        try:
            value = job.fn(conn)
        except Exception as exc:
            if not conn.in_transaction:  # SQLite rolled it all back itself (disk full, I/O error)
                raise sqlite3.OperationalError(f"transaction rolled back by SQLite: {exc}") from exc
            if savepoints:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
            elif conn.total_changes != changes:
                raise _PartialWrite from exc
            if isinstance(exc, sqlite3.IntegrityError):  # the schema's last word on a rule
                exc = sql.constraint_violation(str(exc))
            elif isinstance(exc, sqlite3.OperationalError):  # busy, locked, disk: retry later
                exc = StoreUnavailable(f"store error: {exc}", reason="STORE_UNAVAILABLE")
            results.append((job, None, exc))
        else:
            if savepoints:
                conn.execute("RELEASE job")
            results.append((job, value, None))
    return results


def _settle_all(results: list[tuple[_Job, Any, BaseException | None]]) -> None:
    for job, value, error in results:
        _settle(job.future, value, error)


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the caller went away; the write itself stands
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)

"""SQLite store (the embedded default): WAL, synchronous=FULL, one writer thread, group commit.

Every write is a job run on one dedicated thread that owns the writing connection. The thread
takes all jobs queued at that moment, runs them in one transaction (a job that raises after
writing has the batch run again with a SAVEPOINT around each job, so it is rolled back alone),
then commits once and answers every caller: many accepts share one fsync,
and no caller hears of its write before the commit that holds it. Reads (tracking, reports, the
monitor's gauges) run on a second, read-only connection on a thread of their own: WAL lets them
see every committed write without ever holding up the writer.

The operations are `gateway.store.base`'s, shared with the PostgreSQL store; this driver answers
their steps (`SQLiteSteps`): SQL as written (SQLite takes `?`), rows built as each query's row
type, no row locks, no case or named locks and no wake-ups (one writer in one process serializes every
write and its own subscribers hear of its commits directly). `drive` runs on the writer or the
reader thread with `run_now`: nothing in a step ever waits on the event loop.
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
from gateway.store.base import Operation, SQLStore
from gateway.store.decision import constraint_violation
from gateway.store.migrations import ColumnTypes, migrate
from gateway.store.port import WakeCallback
from gateway.store.steps import (
    Batch,
    Keys,
    LockCase,
    LockName,
    Prefetch,
    Query,
    QueryOne,
    R,
    Statement,
    Steps,
    Wake,
    check_columns,
    drive,
    run_now,
)

T = TypeVar("T")
TYPES = ColumnTypes(integer="INTEGER", blob="BLOB")  # INTEGER PRIMARY KEY: the row id


@dataclass(frozen=True)
class SQLiteConfig:
    path: Path = setting(doc="The SQLite database file (one gateway process; its folder is created).",
                         key="sqlite", example='"/var/lib/transfer-gateway/gateway.db"')
    batch_max: int = 256        # most jobs committed together
    busy_timeout_ms: int = 5000


def _owner_only(path: Path) -> None:
    """The database readable and writable by its owner only: created 0600 before SQLite opens it
    (its -wal and -shm files take the database file's mode), and tightened if an older version
    left it, or its -wal and -shm, readable by others. It holds every person's transfer."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if os.stat(file).st_mode & 0o077:
                os.chmod(file, 0o600)
        except FileNotFoundError:
            pass


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
    operation: Operation[Any]
    future: asyncio.Future[Any]


class SQLiteSteps:
    """The steps' `Executor` on one SQLite connection, inside a transaction the caller opened.
    Every step completes at once (run it with `run_now`); errors are sqlite3's."""

    __slots__ = ("_ahead", "_checked", "_conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._checked: set[str] = set()  # query texts whose columns matched their row type
        self._ahead: dict[int, Any] = {}  # prefetched results, by the id of their query's step

    async def query(self, step: Query[R]) -> list[R]:
        if self._ahead and id(step) in self._ahead:
            return self._ahead.pop(id(step))  # type: ignore[no-any-return]
        return self._query(step)

    def _query(self, step: Query[R]) -> list[R]:
        cursor = self._conn.execute(step.sql, step.params)  # no row lock: the one writer has every row
        if step.sql not in self._checked:
            self._check(step, cursor)
        new = tuple.__new__
        return [new(step.row, values) for values in cursor.fetchall()]

    async def query_one(self, step: QueryOne[R]) -> R | None:
        if self._ahead and id(step) in self._ahead:
            return self._ahead.pop(id(step))  # type: ignore[no-any-return]
        return self._query_one(step)

    def _query_one(self, step: QueryOne[R]) -> R | None:
        cursor = self._conn.execute(step.sql, step.params)
        if step.sql not in self._checked:
            self._check(step, cursor)
        values = cursor.fetchone()
        return None if values is None else tuple.__new__(step.row, values)

    async def prefetch(self, step: Prefetch) -> None:
        """Each query runs now, as it would in a pipeline; its step is answered from here later."""
        for query in step.queries:
            self._ahead[id(query)] = self._query(query) if isinstance(query, Query) else self._query_one(query)

    def run(self, operation: Steps[T]) -> T:
        """Run one operation to its end on this thread (`drive` with `run_now`), forgetting what it
        prefetched and did not take (an id may name another step afterwards)."""
        try:
            return run_now(drive(operation, self))
        finally:
            if self._ahead:
                self._ahead.clear()

    def _check(self, step: Query[Any] | QueryOne[Any], cursor: sqlite3.Cursor) -> None:
        check_columns(step, [name for name, *_ in cursor.description or ()])
        self._checked.add(step.sql)

    async def statement(self, step: Statement) -> int:
        return self._conn.execute(step.sql, step.params).rowcount

    async def batch(self, step: Batch) -> None:
        if len(step.rows) == 1:  # the usual case (one delivery, one stage): no executemany setup
            self._conn.execute(step.sql, step.rows[0])
        elif step.rows:
            self._conn.executemany(step.sql, step.rows)

    async def lock_case(self, step: LockCase) -> None:
        """Nothing to do: the one writer thread already runs writes one after another."""

    async def lock_name(self, step: LockName) -> None:
        """Nothing to do, as for a case."""

    async def wake(self, step: Wake) -> None:
        """Nothing to do: one process owns the file, and it tells its own subscribers."""


class _PartialWrite(Exception):
    """A job failed after it had written: only rolling the batch back undoes its writes."""


class SQLiteStore(SQLStore):
    """The `Store` port on one SQLite file. One process at a time may open a file."""

    def __init__(self, config: SQLiteConfig, clock: Callable[[], dt.datetime], sla: Sla) -> None:
        super().__init__(clock, sla)
        self._config = config
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: sqlite3.Connection | None = None
        self._reader_steps: SQLiteSteps | None = None
        self._reads: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock: int | None = None  # descriptor of the held lock file

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Take the file (see `_exclusive`), migrate it, start the writer and the reader.

        Raises StoreUnavailable naming the file: held by another process, or cannot be opened.
        """
        try:
            self._config.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock = _exclusive(self._config.path)
            _owner_only(self._config.path)
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
        self._reader_steps = SQLiteSteps(self._reader)

    async def close(self) -> None:
        if self._reads is not None:
            reader, reads = self._reader, self._reads
            self._reader = self._reads = self._reader_steps = None
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

    @staticmethod
    def _read_now(reader: sqlite3.Connection, steps: SQLiteSteps, operation: Operation[T]) -> T:
        """One read in one snapshot, on the reader thread."""
        try:
            reader.execute("BEGIN")
            try:
                return steps.run(operation())
            finally:
                reader.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"store error: {exc}", reason="STORE_UNAVAILABLE") from exc

    async def read(self, operation: Operation[T]) -> T:
        """Run `operation` on the reader thread. A read queued when the store closes still runs:
        it holds the connection, which closes on the same thread after it."""
        if self._reads is None or self._loop is None or self._reader is None or self._reader_steps is None:
            raise StoreUnavailable("store is not open", reason="STORE_UNAVAILABLE")
        return await self._loop.run_in_executor(self._reads, self._read_now, self._reader, self._reader_steps,
                                                operation)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._config.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a receipt promises durability: fsync every commit
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={self._config.busy_timeout_ms}")
        return conn

    def _migrate(self, conn: sqlite3.Connection, steps: SQLiteSteps) -> None:
        conn.execute("BEGIN IMMEDIATE")  # another process opening the file waits here
        try:
            steps.run(migrate(TYPES))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _run(self, ready: asyncio.Future[None]) -> None:
        assert self._loop is not None
        loop = self._loop
        try:
            conn = self._connect()
            steps = SQLiteSteps(conn)
            self._migrate(conn, steps)
        except Exception as exc:  # report to open(), then stop the thread
            error = StoreUnavailable(f"cannot open SQLite store {self._config.path}: {exc}{_why_not_written(exc)}",
                                     reason="STORE_UNAVAILABLE")
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
                self._run_batch(conn, steps, loop, batch)
            except BaseException as exc:  # never leave callers waiting on a dead writer
                failure = StoreUnavailable(f"store writer failed: {exc}", reason="STORE_UNAVAILABLE")
                failed: list[tuple[_Job, Any, BaseException | None]] = [(job, None, failure) for job in batch]
                loop.call_soon_threadsafe(_settle_all, failed)
                if not isinstance(exc, Exception):
                    raise
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, steps: SQLiteSteps, loop: asyncio.AbstractEventLoop,
                   batch: list[_Job]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                results = _run_jobs(conn, steps, batch, savepoints=False)
            except _PartialWrite:
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                results = _run_jobs(conn, steps, batch, savepoints=True)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failure = StoreUnavailable(f"commit failed: {exc}", reason="STORE_UNAVAILABLE")
            results = [(job, None, failure) for job in batch]
        loop.call_soon_threadsafe(_settle_all, results)  # one wake-up of the event loop per batch

    async def write(self, operation: Operation[T], *, keys: Keys | None = None) -> T:
        """Queue `operation` for the writer; a batch that must be rolled back runs it again. Keys
        need no heed: the writer runs each operation to its end before the next begins."""
        if self._thread is None or self._loop is None or not self._thread.is_alive():
            raise StoreUnavailable("store is not open", reason="STORE_UNAVAILABLE")
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put(_Job(operation, future))
        return await future

    def on_wake(self, callback: WakeCallback) -> None:
        """One process owns the file: the gateway's own notifications are all there is."""


def _run_jobs(conn: sqlite3.Connection, steps: SQLiteSteps, batch: list[_Job], *, savepoints: bool
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
            value = steps.run(job.operation())
        except Exception as exc:
            if not conn.in_transaction:  # SQLite rolled it all back itself (disk full, I/O error)
                raise sqlite3.OperationalError(f"transaction rolled back by SQLite: {exc}") from exc
            if savepoints:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
            elif conn.total_changes != changes:
                raise _PartialWrite from exc
            if isinstance(exc, sqlite3.IntegrityError):  # the schema's last word on a rule
                exc = constraint_violation(str(exc))
            elif isinstance(exc, sqlite3.OperationalError):  # busy, locked, disk: retry later
                exc = StoreUnavailable(f"store error: {exc}", reason="STORE_UNAVAILABLE")
            results.append((job, None, exc))
        else:
            if savepoints:
                conn.execute("RELEASE job")
            results.append((job, value, None))
    return results


def _why_not_written(exc: BaseException) -> str:
    """What an I/O failure at opening most likely means, to say after SQLite's own words."""
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith(("SQLITE_IOERR", "SQLITE_FULL", "SQLITE_READONLY", "SQLITE_CANTOPEN")):
        return " (it cannot be written: is the disk full, or its file system mounted read-only?)"
    return ""


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


def snapshot_of(path: Path, operation: Operation[T]) -> T:
    """Run a read-only operation on one snapshot of a SQLite file opened read-only: no lock, no
    migration, beside a gateway that is writing it (the log's audit of a live store).

    Raises StoreUnavailable if the file cannot be read as a store.
    """
    if not path.is_file():
        raise StoreUnavailable(f"no SQLite store at {path}", reason="STORE_UNAVAILABLE")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("BEGIN")
            return SQLiteSteps(conn).run(operation())
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot read SQLite store {path}: {exc}", reason="STORE_UNAVAILABLE") from exc

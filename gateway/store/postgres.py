"""PostgreSQL store: the shared engine for several gateway replicas (psycopg 3, async, pooled).

The operations are `gateway.store.base`'s, the same as SQLite's. Writes are group-committed, as
SQLite's are: a few writer tasks (`writers`), each on a connection of its own held in pipeline
mode, take every write queued when they begin and run them in one transaction, in lockstep
(`gateway.store.steps.drive_together`): the steps whose results nobody waits for are sent without
waiting, and one sync answers every operation that wants a result. An accept then costs its batch
three round trips (the case's rows before the decision, the log's head after it, the rest with
the commit) however many accepts the batch holds, one commit, and its statements' share of them.
Reads run alone on a pooled connection. The steps (`gateway.store.pgwire.PipelinedSteps`, on
libpq's pipeline mode) speak PostgreSQL's words:
- `?` placeholders become `$1`, `$2`, …, once per statement text;
- a case's writers are serialized by a transaction-scoped advisory lock on its transfer id, so
  two replicas deciding messages of one case decide them one after the other (a named lock,
  `LockName`, the same way on its name);
- the log's sequence comes from one counter row, updated last in the transaction: gapless and in
  commit order across replicas;
- a query's `SkipLocked` lock is `FOR UPDATE OF … SKIP LOCKED`, so two replicas never lease one
  delivery at the same time;
- a `Wake` is `pg_notify`, sent when the transaction commits; every replica LISTENs and wakes its
  subscribers within milliseconds (and, when its listener reconnects, looks for work it may have
  missed);
- the schema's types are BIGINT and BYTEA (`TYPES`).
Any database failure is `StoreUnavailable` (UNAVAILABLE): no receipt exists unless its
transaction committed. Migrations run under an advisory lock, so replicas may start together.

A batch's operations must not depend on each other's writes: writes with a key in common (the
same case, message id or person; the same platform's claims) go to different batches
(`keys`). An operation refused before it wrote anything (a rule, a replay) leaves the others to
commit; a database error, or an operation that fails after writing, has the batch run again with
each operation in a transaction of its own, so that its error is its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import psycopg
import psycopg_pool
from psycopg import sql as pgsql
from psycopg.types.numeric import Int8BinaryDumper

from gateway.core.errors import StoreUnavailable
from gateway.core.settings import setting
from gateway.core.sla import Sla
from gateway.store.base import Operation, SQLStore
from gateway.store.decision import constraint_violation
from gateway.store.migrations import ColumnTypes, migrate
from gateway.store.pgwire import PipelinedSteps, Wire
from gateway.store.port import WakeCallback
from gateway.store.steps import Keys, Outcome, Statement, Steps, drive_together

log = logging.getLogger("gateway.store.postgres")

T = TypeVar("T")
TYPES = ColumnTypes(integer="BIGINT", blob="BYTEA")
_MIGRATION_LOCK: Final = 7_321_001  # pg_advisory_xact_lock key held while migrating
_RETRIES: Final = 3  # deadlocks and serialization failures are retried this often
_BATCH_MAX: Final = 128  # most operations one write transaction takes
_APPLICATION: Final = "transfer-gateway"  # application_name of every connection (pg_stat_activity)


@dataclass(frozen=True)
class PostgresConfig:
    url: str = setting(doc="The PostgreSQL database every replica shares (a libpq URL; the password belongs in"
                       " ~/.pgpass or PGPASSWORD, not here).", key="postgresql",
                       example='"postgresql://transfer_gateway@db.internal:5432/transfer_gateway"')
    schema: str = setting("transfer_gateway", "The schema holding the gateway's tables (created if missing).")
    pool_min: int = setting(2, "Connections each replica keeps open.", minimum=0)
    pool_max: int = setting(16, "Most connections each replica opens (at least pool_min, and more than writers).",
                            minimum=1)
    timeout: float = setting(5.0, "How long a call waits for a connection before it is answered UNAVAILABLE.",
                             key="timeout_seconds", unit="seconds", minimum=0.1)
    writers: int = setting(2, "Write transactions each replica runs at once, each on a connection of the pool held"
                           " for it; each commits together every write queued when it began (group commit).",
                           minimum=1, maximum=16)

    def __post_init__(self) -> None:
        if self.pool_max < self.pool_min:
            raise ValueError("pool_max must be at least pool_min")
        if self.pool_max <= self.writers:
            raise ValueError("pool_max must be more than writers (reads need a connection of their own)")


@dataclass
class _Job:
    operation: Operation[Any]
    keys: Keys | None  # None: alone in its transaction
    future: asyncio.Future[Any]


_NO_FUTURE: Final[Any] = None  # a read's job: its result is returned, not settled


class _Rerun(Exception):
    """The batch must run again, each operation in a transaction of its own: one failed after
    writing, or the database refused a statement (whose, the pipeline does not say)."""


class PostgresStore(SQLStore):
    """The `Store` port on a PostgreSQL database shared by any number of gateway processes."""

    def __init__(self, config: PostgresConfig, clock: Callable[[], dt.datetime], sla: Sla) -> None:
        super().__init__(clock, sla)
        self._config = config
        self._checked: set[str] = set()  # query texts whose columns matched their row type
        self._pool: psycopg_pool.AsyncConnectionPool | None = None
        self._listener: asyncio.Task[None] | None = None
        self._wakers: list[WakeCallback] = []
        self._channel = f"transfer_gateway_{config.schema}"
        self._queue: deque[_Job] = deque()  # writes waiting for a writer
        self._queued = asyncio.Event()      # set when a write is queued (or the store closes)
        self._writers: list[asyncio.Task[None]] = []
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect the pool and migrate. Raises StoreUnavailable with the server's own reason."""
        options = f"-c search_path={self._config.schema}"
        try:  # one plain connection first: the pool would only say it timed out, not why
            probe = await psycopg.AsyncConnection.connect(self._config.url, connect_timeout=max(1, round(
                self._config.timeout)))
            await probe.close()
        except psycopg.Error as err:
            reason = " ".join(str(err).split())  # libpq's message, password-free, over several lines
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {reason}", reason="STORE_UNAVAILABLE") from err
        self._pool = psycopg_pool.AsyncConnectionPool(
            self._config.url, min_size=self._config.pool_min, max_size=self._config.pool_max,
            timeout=self._config.timeout, open=False, check=psycopg_pool.AsyncConnectionPool.check_connection,
            configure=_configure, kwargs={
                "options": options, "connect_timeout": 5, "fallback_application_name": _APPLICATION,
                "prepare_threshold": None,  # the wire prepares what it sends; psycopg itself never does
            },
        )
        try:
            await self._pool.open(wait=True, timeout=self._config.timeout)
            await self._migrate()
        except (psycopg.Error, psycopg_pool.PoolTimeout) as err:
            await self._pool.close()
            self._pool = None
            raise StoreUnavailable(f"cannot open PostgreSQL store: {err}", reason="STORE_UNAVAILABLE") from err
        self._closing = False
        self._listener = asyncio.create_task(self._listen())
        self._writers = [asyncio.create_task(self._writer()) for _ in range(self._config.writers)]

    async def close(self) -> None:
        """Finish the writes queued, then close every connection."""
        self._closing = True
        self._queued.set()
        writers, self._writers = self._writers, []
        await asyncio.gather(*writers, return_exceptions=True)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _migrate(self) -> None:
        """Create the schema if missing and migrate it, under an advisory lock (replicas may start
        together). Raises psycopg.Error, PoolTimeout."""
        assert self._pool is not None
        schema = '"' + self._config.schema.replace('"', '""') + '"'

        def migration() -> Steps[list[int]]:
            yield Statement("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            yield Statement(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            return (yield from migrate(TYPES))

        lane = _Lane(self._pool, prepare=False)
        try:
            [outcome] = await self._transaction(lane, await lane.get(), [migration()])
        finally:
            await lane.release()
        if outcome.error is not None:
            raise outcome.error
        for version in outcome.value:
            log.info("migrated", extra={"fields": {"version": version}})

    async def _listen(self) -> None:
        """Wake local subscribers on other replicas' commits; reconnect while the database is away."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._config.url, autocommit=True, connect_timeout=5, fallback_application_name=_APPLICATION,
                ) as conn:
                    await conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(self._channel)))
                    for wake in self._wakers:  # anything committed while no one listened: look again
                        wake(None, None)
                    async for note in conn.notifies():
                        platform, _, acknowledged = note.payload.partition("\n")
                        for wake in self._wakers:
                            wake(platform, acknowledged or None)
            except psycopg.Error as err:
                log.warning("notification listener lost its connection; polling meanwhile",
                            extra={"fields": {"error": type(err).__name__}})
                await asyncio.sleep(1.0)

    # -- running operations ---------------------------------------------------------------

    async def write(self, operation: Operation[T], *, keys: Keys | None = None) -> T:
        """Queue `operation` for the next writer free; it commits with the others of its batch."""
        if self._pool is None or self._closing:
            raise StoreUnavailable("store is not open", reason="STORE_UNAVAILABLE")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(operation, keys, future))
        self._queued.set()
        return await future

    def on_wake(self, callback: WakeCallback) -> None:
        self._wakers.append(callback)

    def _take(self) -> list[_Job]:
        """The writes queued, oldest first, up to _BATCH_MAX, leaving for later any that shares a
        key with one taken or left before it (so that conflicting writes keep their order); a
        write of no keys stated (None) goes alone, and the ones after it wait for it."""
        batch: list[_Job] = []
        taken: set[str] = set()
        left: list[_Job] = []
        while self._queue and len(batch) < _BATCH_MAX:
            job = self._queue[0]
            if job.keys is None:
                if not batch and not left:
                    batch.append(self._queue.popleft())
                break
            self._queue.popleft()
            if not taken.isdisjoint(job.keys):
                left.append(job)
            else:
                batch.append(job)
            taken.update(job.keys)  # what comes after a job left waits for it too
        self._queue.extendleft(reversed(left))
        return batch

    async def _writer(self) -> None:
        """One writer: a connection held in pipeline mode while it serves, one transaction per
        batch of the queued writes. Stops once the store closes and nothing is queued."""
        assert self._pool is not None
        lane = _Lane(self._pool, prepare=True)
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._queued.clear()
                    await self._queued.wait()
                    continue
                batch = self._take()
                try:
                    results = await self._batch(lane, batch)
                except Exception as exc:  # a defect (INTERNAL for its callers): the writer goes on
                    log.exception("write failed")
                    results = [(None, exc)] * len(batch)
                for job, (value, error) in zip(batch, results, strict=True):
                    _settle(job.future, value, error)
        finally:
            await lane.release()

    async def read(self, operation: Operation[T]) -> T:
        """One snapshot on a pooled connection, beside the writers; the same retries and errors."""
        if self._pool is None:
            raise StoreUnavailable("store is not open", reason="STORE_UNAVAILABLE")
        lane = _Lane(self._pool, prepare=False)
        try:
            [(value, error)] = await self._batch(lane, [_Job(operation, None, _NO_FUTURE)])
        finally:
            await lane.release()
        if error is not None:
            raise error
        return value  # type: ignore[no-any-return]

    async def _batch(self, lane: _Lane, jobs: Sequence[_Job]) -> list[tuple[Any, BaseException | None]]:
        """Each job's value or error, its operation run with the others in one transaction (a
        fresh generator per attempt), retried after a deadlock, or on another connection when
        its own failed before the commit was sent; run again one by one when the batch cannot
        commit as a whole (`_Rerun`)."""
        for attempt in range(1, _RETRIES + 1):
            lane.committing = False
            try:
                wire = await lane.get()
                try:
                    outcomes = await self._transaction(lane, wire, [job.operation() for job in jobs])
                finally:
                    if not wire.idle:
                        await lane.release()  # it could not be rolled back: its connection is closed
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == _RETRIES:
                    return [(None, StoreUnavailable("the database kept aborting the transaction",
                                                    reason="STORE_UNAVAILABLE"))] * len(jobs)
            except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as err:
                # The connection failed, or the database is away. Before the commit was sent
                # nothing can have committed: another connection may do. After, nobody knows
                # (the caller's retry is answered by idempotency either way).
                await lane.release()
                if lane.committing or attempt == _RETRIES or isinstance(err, psycopg_pool.PoolTimeout):
                    return [(None, StoreUnavailable(f"store error: {type(err).__name__}",
                                                    reason="STORE_UNAVAILABLE"))] * len(jobs)
            except psycopg.errors.ReadOnlySqlTransaction as err:
                # A standby after a fail-over, a database or role set read-only: every job of the
                # batch is refused alike, and the database may take writes again later.
                detail = " ".join(str(err).split())
                return [(None, StoreUnavailable(f"store error: the database refuses writes: {detail}",
                                                reason="STORE_UNAVAILABLE"))] * len(jobs)
            except (_Rerun, psycopg.Error) as err:
                if len(jobs) > 1:
                    return [result for job in jobs for result in await self._batch(lane, [job])]
                if isinstance(err, psycopg.errors.IntegrityError):  # the schema's last word on a rule
                    return [(None, constraint_violation(err.diag.constraint_name or ""))]
                raise  # any other database error is a bug of ours: INTERNAL
            else:
                return [(o.value, o.error) for o in outcomes]
        raise AssertionError("unreachable")

    async def _transaction(self, lane: _Lane, wire: Wire, operations: list[Steps[Any]]) -> list[Outcome]:
        """Run `operations` in lockstep in one transaction and commit it; roll it back instead if
        the database refused or an operation failed after writing (raising _Rerun when others
        would be undone with it)."""
        wire.command(b"BEGIN")
        steps = PipelinedSteps(wire, self._channel, self._checked)
        try:
            try:
                outcomes, committed = await drive_together(operations, steps)
            finally:
                lane.committing = steps.committing
            if committed:  # with the operations' last steps: what they raised since is their own
                return outcomes
            if any(o.error is not None and o.wrote for o in outcomes):
                wire.command(b"ROLLBACK")
                await wire.sync()
                if len(outcomes) > 1:
                    raise _Rerun
                return outcomes  # its error, and nothing of it stored
            wire.command(b"COMMIT")
            lane.committing = True
            await wire.sync()
        except BaseException:
            if not wire.broken:  # a broken wire's connection is closed, which rolls back
                with contextlib.suppress(psycopg.Error):
                    if not wire.idle:
                        wire.command(b"ROLLBACK")
                        await wire.sync()
            raise
        return outcomes


class _Lane:
    """A connection of the pool on a `Wire`: held by a writer while it serves, or taken for one
    read. A lane whose connection failed takes another at its next use."""

    def __init__(self, pool: psycopg_pool.AsyncConnectionPool, *, prepare: bool) -> None:
        self._pool = pool
        self._prepare = prepare
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._wire: Wire | None = None
        self.committing = False  # its transaction's COMMIT was sent: a failure now leaves it unknown

    async def get(self) -> Wire:
        if self._wire is None:
            conn = await self._pool.getconn()
            try:
                self._wire = Wire(conn, prepare=self._prepare)
            except BaseException:
                await self._pool.putconn(conn)
                raise
            self._conn = conn
        return self._wire

    async def release(self) -> None:
        """Give the connection back to the pool; closed first if it cannot be left clean."""
        conn, wire, self._conn, self._wire = self._conn, self._wire, None, None
        if conn is None or wire is None:
            return
        try:
            await wire.leave()
        except psycopg.Error:
            await conn.close()  # the pool discards a closed connection
        await self._pool.putconn(conn)


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    """Every integer parameter as a BIGINT, the type of every integer column: one prepared
    statement per text, not one per combination of the sizes its values happen to have."""
    conn.adapters.register_dumper(int, Int8BinaryDumper)


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the caller went away; the write itself stands
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


async def snapshot_of(config: PostgresConfig, operation: Operation[T]) -> T:
    """Run a read-only operation on one REPEATABLE READ snapshot of the schema, on a connection of
    its own: no pool, no migration, nothing written (the log's audit of a live database).

    Raises StoreUnavailable if the database cannot be reached.
    """
    try:
        conn = await psycopg.AsyncConnection.connect(
            config.url, connect_timeout=max(1, round(config.timeout)), options=f"-c search_path={config.schema}",
            fallback_application_name=_APPLICATION, prepare_threshold=None)
    except psycopg.Error as err:
        raise StoreUnavailable(f"cannot connect to PostgreSQL: {' '.join(str(err).split())}",
                               reason="STORE_UNAVAILABLE") from err
    try:
        wire = Wire(conn, prepare=False)
        wire.command(b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        ([outcome], committed) = await drive_together([operation()], PipelinedSteps(wire, "", set()))
        if not committed:
            wire.command(b"COMMIT")
            await wire.sync()
    finally:
        await conn.close()
    if outcome.error is not None:
        raise outcome.error
    return outcome.value  # type: ignore[no-any-return]

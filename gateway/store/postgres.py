"""PostgreSQL store: the shared engine for several gateway replicas (psycopg 3, async, pooled).

The operations are `gateway.store.base`'s, the same as SQLite's; this driver runs each one in one
transaction on a pooled connection and answers its steps (`PostgresSteps`) in PostgreSQL's words:
- `?` placeholders become `%s` (and a literal `%` becomes `%%`), once per statement text;
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
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import psycopg
import psycopg_pool
from psycopg import sql as pgsql
from psycopg.rows import RowMaker

from gateway.core.errors import StoreUnavailable
from gateway.core.settings import setting
from gateway.core.sla import Sla
from gateway.store.base import Operation, SQLStore
from gateway.store.decision import constraint_violation
from gateway.store.migrations import ColumnTypes, migrate
from gateway.store.port import WakeCallback
from gateway.store.steps import (
    Batch,
    LockCase,
    LockName,
    Query,
    QueryOne,
    R,
    SkipLocked,
    Statement,
    Wake,
    check_columns,
    drive,
)

log = logging.getLogger("gateway.store.postgres")

T = TypeVar("T")
TYPES = ColumnTypes(integer="BIGINT", blob="BYTEA")
_MIGRATION_LOCK: Final = 7_321_001  # pg_advisory_xact_lock key held while migrating
_RETRIES: Final = 3  # deadlocks and serialization failures are retried this often


@dataclass(frozen=True)
class PostgresConfig:
    url: str = setting(doc="The PostgreSQL database every replica shares (a libpq URL; the password belongs in"
                       " ~/.pgpass or PGPASSWORD, not here).", key="postgresql",
                       example='"postgresql://transfer_gateway@db.internal:5432/transfer_gateway"')
    schema: str = setting("transfer_gateway", "The schema holding the gateway's tables (created if missing).")
    pool_min: int = setting(2, "Connections each replica keeps open.", minimum=0)
    pool_max: int = setting(16, "Most connections each replica opens (at least pool_min).", minimum=1)
    timeout: float = setting(5.0, "How long a call waits for a connection before it is answered UNAVAILABLE.",
                             key="timeout_seconds", unit="seconds", minimum=0.1)

    def __post_init__(self) -> None:
        if self.pool_max < self.pool_min:
            raise ValueError("pool_max must be at least pool_min")


# What a statement holds that psycopg would misread: a `?` or `%`, outside comments and literals.
_TOKENS = re.compile(r"--[^\n]*|'(?:[^']|'')*'|[?%]")
_PSYCOPG = {"?": "%s", "%": "%%"}


@functools.lru_cache(maxsize=1024)
def render(sql: str, lock: SkipLocked | None = None) -> str:
    """A statement in psycopg's words: `%s` for each `?` and `%%` for each `%` outside comments and
    string literals, then the row lock a query asks for."""
    text = _TOKENS.sub(lambda m: _PSYCOPG.get(m.group(), m.group()), sql)
    if lock is not None:
        text += f" FOR UPDATE OF {lock.of} SKIP LOCKED"
    return text


@functools.lru_cache(maxsize=256)
def _row_factory(row: type[R]) -> Callable[[Any], RowMaker[R]]:
    """psycopg's row factory for a row type: each row's values go straight into the NamedTuple."""
    maker = functools.partial(tuple.__new__, row)
    return lambda _cursor: maker


class PostgresSteps:
    """The steps' `Executor` on one connection, inside a transaction the caller opened; errors are
    psycopg's."""

    __slots__ = ("_channel", "_checked", "_conn")

    def __init__(self, conn: psycopg.AsyncConnection[Any], channel: str, checked: set[str]) -> None:
        self._conn = conn
        self._channel = channel  # where wake-ups are sent
        self._checked = checked  # query texts whose columns matched their row type

    async def query(self, step: Query[R]) -> list[R]:
        cursor = self._conn.cursor(row_factory=_row_factory(step.row))
        await cursor.execute(render(step.sql, step.lock), step.params)
        if step.sql not in self._checked:
            self._check(step, cursor)
        return await cursor.fetchall()

    async def query_one(self, step: QueryOne[R]) -> R | None:
        cursor = self._conn.cursor(row_factory=_row_factory(step.row))
        await cursor.execute(render(step.sql), step.params)
        if step.sql not in self._checked:
            self._check(step, cursor)
        return await cursor.fetchone()

    def _check(self, step: Query[Any] | QueryOne[Any], cursor: psycopg.AsyncCursor[Any]) -> None:
        check_columns(step, [column.name for column in cursor.description or ()])
        self._checked.add(step.sql)

    async def statement(self, step: Statement) -> int:
        cursor = await self._conn.execute(render(step.sql), step.params)
        return cursor.rowcount

    async def batch(self, step: Batch) -> None:
        if step.rows:
            async with self._conn.cursor() as cursor:
                await cursor.executemany(render(step.sql), step.rows)

    async def lock_case(self, step: LockCase) -> None:
        """Writers of one case, on any replica, wait for each other until commit."""
        await self._conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (step.transfer_id,))

    async def lock_name(self, step: LockName) -> None:
        """Writers naming one lock, on any replica, wait for each other until commit. Its key is the
        name's hash, as a case's is its transfer id's: names and transfer ids never look alike."""
        await self._conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (step.name,))

    async def wake(self, step: Wake) -> None:
        """Delivered to every listening replica when the transaction commits (not before): the
        platform, and the message it acknowledged after a newline (ids hold no newline)."""
        payload = f"{step.platform}\n{step.acknowledged}" if step.acknowledged else step.platform
        await self._conn.execute("SELECT pg_notify(%s, %s)", (self._channel, payload))


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
            timeout=self._config.timeout, kwargs={"options": options, "connect_timeout": 5}, open=False,
            check=psycopg_pool.AsyncConnectionPool.check_connection,
        )
        try:
            await self._pool.open(wait=True, timeout=self._config.timeout)
            await self._migrate()
        except (psycopg.Error, psycopg_pool.PoolTimeout) as err:
            await self._pool.close()
            self._pool = None
            raise StoreUnavailable(f"cannot open PostgreSQL store: {err}", reason="STORE_UNAVAILABLE") from err
        self._listener = asyncio.create_task(self._listen())

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _migrate(self) -> None:
        assert self._pool is not None
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                pgsql.Identifier(self._config.schema)))
            for version in await drive(migrate(TYPES), PostgresSteps(conn, self._channel, self._checked)):
                log.info("migrated", extra={"fields": {"version": version}})

    async def _listen(self) -> None:
        """Wake local subscribers on other replicas' commits; reconnect while the database is away."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._config.url, autocommit=True, connect_timeout=5,
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

    async def write(self, operation: Operation[T]) -> T:
        """Run one operation in its own transaction (a fresh generator per attempt)."""
        if self._pool is None:
            raise StoreUnavailable("store is not open", reason="STORE_UNAVAILABLE")
        for attempt in range(1, _RETRIES + 1):
            try:
                async with self._pool.connection() as conn, conn.transaction():
                    return await drive(operation(), PostgresSteps(conn, self._channel, self._checked))
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == _RETRIES:
                    raise StoreUnavailable("the database kept aborting the transaction",
                                           reason="STORE_UNAVAILABLE") from None
            except psycopg.errors.IntegrityError as err:  # the schema's last word on a rule
                raise constraint_violation(err.diag.constraint_name or "") from err
            except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as err:
                # The database is away or unreachable: worth retrying. Any other database error
                # is a bug of ours and surfaces as INTERNAL.
                raise StoreUnavailable(f"store error: {type(err).__name__}", reason="STORE_UNAVAILABLE") from err
        raise AssertionError("unreachable")

    async def read(self, operation: Operation[T]) -> T:
        """A read is a transaction like a write: one snapshot, the same retries and errors."""
        return await self.write(operation)

    def on_wake(self, callback: WakeCallback) -> None:
        self._wakers.append(callback)


async def snapshot_of(config: PostgresConfig, operation: Operation[T]) -> T:
    """Run a read-only operation on one REPEATABLE READ snapshot of the schema, on a connection of
    its own: no pool, no migration, nothing written (the log's audit of a live database).

    Raises StoreUnavailable if the database cannot be reached.
    """
    try:
        conn = await psycopg.AsyncConnection.connect(config.url, connect_timeout=max(1, round(config.timeout)),
                                                     options=f"-c search_path={config.schema}")
    except psycopg.Error as err:
        raise StoreUnavailable(f"cannot connect to PostgreSQL: {' '.join(str(err).split())}",
                               reason="STORE_UNAVAILABLE") from err
    try:
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        await conn.set_read_only(True)
        async with conn.transaction():
            return await drive(operation(), PostgresSteps(conn, "", set()))
    finally:
        await conn.close()

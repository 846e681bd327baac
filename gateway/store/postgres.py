"""PostgreSQL store: the shared engine for several gateway replicas (psycopg 3, async, pooled).

The SQL is `gateway.store.sql`, the same as SQLite's; this driver runs each operation in one
transaction on a pooled connection and gives the engine-specific steps their meaning:
- a case's writers are serialized by a transaction-scoped advisory lock on its transfer id, so
  two replicas deciding messages of one case decide them one after the other;
- the log's sequence comes from one counter row, updated last in the transaction: gapless and in
  commit order across replicas;
- deliveries are claimed with `FOR UPDATE SKIP LOCKED`, so two replicas never lease one
  delivery at the same time;
- a commit that creates work for a platform sends `NOTIFY`; every replica LISTENs and wakes its
  subscribers within milliseconds (polling remains the fallback).
Any database failure is `StoreUnavailable` (UNAVAILABLE): no receipt exists unless its
transaction committed. Migrations run under an advisory lock, so replicas may start together.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import psycopg
import psycopg_pool
from psycopg import sql as pgsql

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
from gateway.store.sql import MIGRATIONS, Fetch, Steps, postgres_ddl

log = logging.getLogger("gateway.store.postgres")

T = TypeVar("T")
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


@functools.lru_cache(maxsize=512)
def _pg(statement: str) -> str:
    return statement.replace("?", "%s")


class PostgresStore:
    """The `Store` port on a PostgreSQL database shared by any number of gateway processes."""

    def __init__(self, config: PostgresConfig, clock: Callable[[], dt.datetime], sla: Sla | None = None) -> None:
        self._config = config
        self._clock = clock
        self._sla = sla or Sla(WorkingCalendar())
        self._pool: psycopg_pool.AsyncConnectionPool | None = None
        self._listener: asyncio.Task[None] | None = None
        self._wakers: list[Callable[[str], None]] = []
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
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = await (await conn.execute("SELECT MAX(version) FROM schema_version")).fetchone()
            current = (row[0] if row else None) or 0
            for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                await conn.execute(postgres_ddl(script))  # our own DDL, no parameters
                await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                log.info("migrated", extra={"fields": {"version": version}})

    async def _listen(self) -> None:
        """Wake local subscribers on other replicas' commits; reconnect while the database is away."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._config.url, autocommit=True, connect_timeout=5,
                ) as conn:
                    await conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(self._channel)))
                    async for note in conn.notifies():
                        for wake in self._wakers:
                            wake(note.payload)
            except psycopg.Error as err:
                log.warning("notification listener lost its connection; polling meanwhile",
                            extra={"fields": {"error": type(err).__name__}})
                await asyncio.sleep(1.0)

    # -- running the shared SQL ----------------------------------------------------------------

    async def _run(self, steps: Callable[[], Steps[T]]) -> T:
        """Run one operation in its own transaction (a fresh generator per attempt)."""
        if self._pool is None:
            raise StoreUnavailable("store is not open", reason="STORE_UNAVAILABLE")
        for attempt in range(1, _RETRIES + 1):
            try:
                async with self._pool.connection() as conn, conn.transaction():
                    return await self._drive(conn, steps())
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == _RETRIES:
                    raise StoreUnavailable("the database kept aborting the transaction",
                                           reason="STORE_UNAVAILABLE") from None
            except psycopg.errors.IntegrityError as err:  # the schema's last word on a rule
                raise sql.constraint_violation(err.diag.constraint_name or "") from err
            except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as err:
                # The database is away or unreachable: worth retrying. Any other database error
                # is a bug of ours and surfaces as INTERNAL.
                raise StoreUnavailable(f"store error: {type(err).__name__}", reason="STORE_UNAVAILABLE") from err
        raise AssertionError("unreachable")

    async def _drive(self, conn: psycopg.AsyncConnection[Any], steps: Steps[T]) -> T:
        result: Any = None
        while True:
            try:
                q = steps.send(result)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            result = None
            if q.fetch is Fetch.LOCK_CASE:
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", q.params)
            elif q.fetch is Fetch.WAKE:
                await conn.execute("SELECT pg_notify(%s, %s)", (self._channel, q.params[0]))
            elif q.fetch is Fetch.MANY:
                if q.params:
                    async with conn.cursor() as cursor:
                        await cursor.executemany(_pg(q.sql), q.params)
            else:
                cursor = await conn.execute(_pg(q.sql), q.params)
                if q.fetch is Fetch.ONE:
                    result = await cursor.fetchone()
                elif q.fetch is Fetch.ROWCOUNT:
                    result = cursor.rowcount
                else:
                    result = await cursor.fetchall()

    # -- the port ----------------------------------------------------------------------------

    def on_wake(self, callback: Callable[[str], None]) -> None:
        self._wakers.append(callback)

    async def accept(self, message: IncomingMessage, decide: Decide, make_receipt: MakeReceipt) -> AcceptOutcome:
        return await self._run(lambda: sql.accept(message, decide, make_receipt, self._clock, self._sla))

    async def claim_deliveries(
        self, platform: str, agencies: frozenset[str] | None, *, limit: int, lease: dt.timedelta,
        max_attempts: int, now: dt.datetime,
    ) -> list[ClaimedDelivery]:
        return await self._run(lambda: sql.claim_deliveries(
            platform, agencies, limit=limit, lease=lease, max_attempts=max_attempts, now=now,
            lock_rows=" FOR UPDATE OF d SKIP LOCKED"))

    async def ack_delivery(self, platform: str, message_id: str, now: dt.datetime) -> None:
        await self._run(lambda: sql.ack_delivery(platform, message_id, now))

    async def get_case(self, transfer_id: str) -> CaseView | None:
        return await self._run(lambda: sql.get_case(transfer_id))

    async def idle_cases(self, state: int, idle_since: dt.datetime, limit: int) -> list[CaseView]:
        return await self._run(lambda: sql.idle_cases(state, idle_since, limit))

    async def receipt_of(self, message_id: str) -> bytes | None:
        return await self._run(lambda: sql.receipt_of(message_id))

    async def held_transfers(self) -> list[HeldTransfer]:
        return await self._run(sql.held_transfers)

    async def settlement(self, start: dt.datetime, end: dt.datetime) -> list[SettlementLine]:
        return await self._run(lambda: sql.settlement(start, end))

    async def fund_totals(self) -> list[SettlementLine]:
        return await self._run(sql.fund_totals)

    async def delivery_stats(self) -> list[DeliveryStats]:
        return await self._run(sql.delivery_stats)

    async def list_cases(self, query: CaseQuery) -> list[CaseView]:
        return await self._run(lambda: sql.list_cases(query))

    async def stage_counts(self, now: dt.datetime, due_soon_before: dt.datetime) -> list[StageCount]:
        return await self._run(lambda: sql.stage_counts(now, due_soon_before))

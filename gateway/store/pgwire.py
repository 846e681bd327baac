"""The PostgreSQL driver's wire: libpq's pipeline mode under the steps (`PipelinedSteps`).

An accept is about a dozen statements. Sent through psycopg's cursors, even in psycopg's own
pipeline mode, each costs the gateway ~25–40 µs (a cursor, a flush and a poll per statement: psycopg
sends every statement as it comes); sent here, ~3 µs: each statement goes into libpq's buffer with
`PQsendQueryPrepared` and nothing is sent until a step's result is wanted, when one
`PQpipelineSync` sends them all and one read collects every result (measured in
docs/performance.md). What psycopg still does is what it is good at: connecting and pooling,
turning parameters into PostgreSQL's binary format and rows back into Python values
(`psycopg.adapt.Transformer`), and naming each server error's class (`psycopg.errors`).

A `Wire` owns its connection while it holds it (nothing else may use the connection meanwhile) and
leaves pipeline mode when it lets go. A writer's wire prepares each statement text once, by a
name of its own, and keeps it for as long as it holds the connection (and deallocates its names
when it lets go); a read's wire, used once, sends unnamed statements.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import re
from collections.abc import Sequence
from typing import Any, Final

import psycopg
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer

from gateway.store.steps import (
    ROW_LOCK,
    Batch,
    LockCase,
    LockName,
    Query,
    QueryOne,
    R,
    SkipLocked,
    Statement,
    Step,
    Wake,
    check_columns,
)

_BINARY: Final = pq.Format.BINARY
_OK: Final = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)
_names = itertools.count()  # wires that prepare, process-wide: each names its statements apart

# What a statement holds that libpq would misread: a `?`, outside comments and literals.
_TOKENS = re.compile(r"--[^\n]*|'(?:[^']|'')*'|\?")


@functools.lru_cache(maxsize=1024)
def render(sql: str, lock: SkipLocked | None = None) -> bytes:
    """A statement in PostgreSQL's words: `$1`, `$2`, … for each `?` outside comments and string
    literals, then the row lock a query asks for (where it holds ROW_LOCK, else at its end)."""
    numbers = itertools.count(1)
    text = _TOKENS.sub(lambda m: f"${next(numbers)}" if m.group() == "?" else m.group(), sql)
    if lock is not None:
        clause = f"FOR UPDATE OF {lock.of} SKIP LOCKED"
        text = text.replace(ROW_LOCK, clause) if ROW_LOCK in text else f"{text} {clause}"
    return text.encode()


@functools.lru_cache(maxsize=64)
def _formats(count: int) -> list[PyFormat]:
    return [PyFormat.AUTO] * count


class Wire:
    """One connection in libpq's pipeline mode: statements are sent without waiting, and `sync`
    sends them and reads every result back, each to the `_Result` it was sent with."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], *, prepare: bool) -> None:
        self._conn = conn
        self._pg = conn.pgconn
        self._tx = Transformer(conn)
        self._encoding = conn.info.encoding
        self._prefix = f"tg{next(_names)}_" if prepare else None
        self._names = itertools.count()
        self._prepared: dict[tuple[bytes, tuple[int, ...]], bytes] = {}
        self._preparing: list[tuple[bytes, tuple[int, ...]]] = []  # prepared since the last sync
        self._expected: list[_Result | None] = []  # for each command sent since the last sync, where its result goes
        self.epoch = 0  # syncs so far: a result sent before the last one has arrived
        self.broken = False  # a sync was interrupted: results may still come that nobody can place
        self._pg.enter_pipeline_mode()

    def send(self, sql: bytes, params: Sequence[Any], result: _Result | None = None) -> None:
        """Queue one statement; its result goes to `result` at the next sync (None: nobody's)."""
        tx, pg = self._tx, self._pg
        values = tx.dump_sequence(params, _formats(len(params))) if params else None
        if self._prefix is None:
            pg.send_query_params(sql, values, param_types=tx.types if params else None,
                                 param_formats=tx.formats if params else None, result_format=_BINARY)
        else:
            types = tuple(tx.types or ()) if params else ()
            name = self._prepared.get((sql, types))
            if name is None:
                name = self._prepared[(sql, types)] = f"{self._prefix}{next(self._names)}".encode()
                pg.send_prepare(name, sql, param_types=types or None)
                self._preparing.append((sql, types))
                self._expected.append(None)
            pg.send_query_prepared(name, values, param_formats=tx.formats if params else None, result_format=_BINARY)
        self._expected.append(result)

    async def sync(self) -> None:
        """Send what is queued and wait for all of it to run. Raises the first statement's error
        (psycopg's class for it: IntegrityError, DeadlockDetected, …), after which every statement
        of the transaction is void; OperationalError if the connection failed. A sync interrupted
        (cancelled, or the connection failed) leaves the wire `broken`: its connection must be
        closed, not used again."""
        if self.broken:
            raise psycopg.OperationalError("the connection's pipeline was left in the middle of a sync")
        try:
            await self._sync()
        except BaseException as exc:
            if not isinstance(exc, psycopg.Error) or isinstance(exc, psycopg.OperationalError):
                self.broken = True  # a statement's own error leaves the pipeline whole; anything else does not
            raise

    async def _sync(self) -> None:
        pg = self._pg
        pg.pipeline_sync()
        while pg.flush():  # sent in part: read meanwhile, or the server may stop reading us
            if await self._wait(write=True):
                pg.consume_input()
        expected, self._expected = self._expected, []
        position, error = 0, None
        while True:
            pg.consume_input()
            while not pg.is_busy():
                res = pg.get_result()
                if res is None:  # the end of one command's results
                    continue
                status = res.status
                if status == pq.ExecStatus.PIPELINE_SYNC:
                    self.epoch += 1
                    preparing, self._preparing = self._preparing, []
                    if error is not None:
                        for key in preparing:  # an aborted pipeline prepared nothing (or may not have)
                            del self._prepared[key]
                        raise error
                    return
                if position == len(expected):
                    # A result no command was sent for: the server ended the session on its own
                    # (its FATAL error at a fast shutdown or pg_terminate_backend), and no sync
                    # answer will follow.
                    reason = res.error_message.decode(self._encoding, "replace").strip() or f"status {status}"
                    raise psycopg.OperationalError(f"the server ended the connection: {reason}")
                slot = expected[position]
                position += 1
                if status in _OK:
                    if slot is not None:
                        slot.res = res
                elif status == pq.ExecStatus.FATAL_ERROR and error is None:
                    error = psycopg.errors.error_from_result(res, encoding=self._encoding)
            await self._wait(write=False)

    async def _wait(self, *, write: bool) -> bool:
        """Until the socket can be read (or, with `write`, written); whether it can be read."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[bool] = loop.create_future()
        fd = self._pg.socket

        def readable() -> None:
            if not ready.done():
                ready.set_result(True)

        def writable() -> None:
            if not ready.done():
                ready.set_result(False)

        loop.add_reader(fd, readable)
        if write:
            loop.add_writer(fd, writable)
        try:
            return await ready
        finally:
            loop.remove_reader(fd)
            if write:
                loop.remove_writer(fd)

    def rows(self, res: pq.abc.PGresult, row: type[R], *, one: bool) -> list[R] | R | None:
        """The rows of a result, each built as `row`."""
        tx = self._tx
        tx.set_pgresult(res)
        make = _maker(row)
        if one:
            return tx.load_row(0, make) if res.ntuples else None
        return tx.load_rows(0, res.ntuples, make)

    def command(self, sql: bytes) -> None:
        """Queue a command of no parameters and no result (BEGIN, COMMIT, ROLLBACK), unnamed."""
        self._pg.send_query_params(sql, None)
        self._expected.append(None)

    @property
    def idle(self) -> bool:
        """Nothing queued, no transaction open, and nothing left over from an interrupted sync."""
        return not self.broken and not self._expected and self._pg.transaction_status == pq.TransactionStatus.IDLE

    async def leave(self) -> None:
        """Roll back whatever is open, forget what this wire prepared and leave pipeline mode, so
        that the connection can go back to its pool. Raises psycopg.Error if it cannot (then the
        connection must be closed)."""
        if self.broken:
            raise psycopg.OperationalError("the connection's pipeline was left in the middle of a sync")
        if self._expected or self._pg.transaction_status != pq.TransactionStatus.IDLE:
            self.command(b"ROLLBACK")
        if self._prepared:
            self._prepared.clear()
            self.command(b"DEALLOCATE ALL")
        if self._expected:
            await self.sync()
        self._pg.exit_pipeline_mode()


@functools.lru_cache(maxsize=256)
def _maker(row: type[R]) -> Any:
    """psycopg's row maker for a row type: each row's values go straight into the NamedTuple."""
    return functools.partial(tuple.__new__, row)


class _Result:
    """What a wanted step gets back: its command's result, once the wire synced after it was sent."""

    __slots__ = ("_epoch", "_step", "_steps", "res")

    def __init__(self, steps: PipelinedSteps, step: Query[Any] | QueryOne[Any] | Statement) -> None:
        self._steps = steps
        self._epoch = steps.wire.epoch
        self._step = step
        self.res: pq.abc.PGresult | None = None

    @property
    def ready(self) -> bool:
        return self._steps.wire.epoch > self._epoch

    def result(self) -> Any:
        res, step = self.res, self._step
        assert res is not None  # the sync raised otherwise
        if isinstance(step, Statement):
            return res.command_tuples or 0
        steps = self._steps
        if step.sql not in steps.checked:
            check_columns(step, [(res.fname(i) or b"").decode() for i in range(res.nfields)])
            steps.checked.add(step.sql)
        return steps.wire.rows(res, step.row, one=isinstance(step, QueryOne))


class PipelinedSteps:
    """The steps' `Pipeline` on a `Wire`, inside a transaction its caller began; errors are
    psycopg's, raised by the sync that meets them."""

    __slots__ = ("_ahead", "_channel", "_woken", "checked", "committing", "wire")

    def __init__(self, wire: Wire, channel: str, checked: set[str]) -> None:
        self.wire = wire
        self.committing = False  # the COMMIT was sent with the last sync (`drive_together`, LAST)
        self._channel = channel  # where wake-ups are sent
        self.checked = checked   # query texts whose columns matched their row type
        self._ahead: dict[int, _Result] = {}  # prefetched queries, by the id of their step
        self._woken: set[str] = set()  # wake-ups already sent in this transaction

    def send(self, step: Step) -> _Result | None:
        wire = self.wire
        if isinstance(step, Statement):
            result = _Result(self, step) if step.wanted else None
            wire.send(render(step.sql), step.params, result)
            return result
        if isinstance(step, Query | QueryOne):
            if self._ahead and id(step) in self._ahead:
                return self._ahead.pop(id(step))
            return self._query(step)
        if isinstance(step, Batch):
            sql = render(step.sql)
            for row in step.rows:
                wire.send(sql, row)
            return None
        if isinstance(step, LockCase | LockName):
            # Writers of one case (or naming one lock), on any replica, wait for each other until
            # commit. A name's key is its hash, as a case's is its transfer id's: names and
            # transfer ids never look alike.
            key = step.transfer_id if isinstance(step, LockCase) else step.name
            wire.send(b"SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", (key,))
            return None
        if isinstance(step, Wake):
            # Delivered to every listening replica when the transaction commits (not before); once
            # per payload and transaction is enough.
            # The payload: the platform, and the message it acknowledged after a newline (ids hold
            # no newline).
            payload = f"{step.platform}\n{step.acknowledged}" if step.acknowledged else step.platform
            if step.when is not None:  # a notification PostgreSQL sends only if the query finds a row
                wire.send(render(f"SELECT pg_notify(?, ?) WHERE EXISTS ({step.when.sql})"),
                          (self._channel, payload, *step.when.params))
            elif payload not in self._woken:
                self._woken.add(payload)
                wire.send(b"SELECT pg_notify($1, $2)", (self._channel, payload))
            return None
        for query in step.queries:  # Prefetch
            self._ahead[id(query)] = self._query(query)
        return None

    def _query(self, step: Query[Any] | QueryOne[Any]) -> _Result:
        result = _Result(self, step)
        self.wire.send(render(step.sql, step.lock if isinstance(step, Query) else None), step.params, result)
        return result

    async def sync(self, *, commit: bool = False) -> None:
        if commit:
            self.wire.command(b"COMMIT")
            self.committing = True
        await self.wire.sync()

"""The store's steps: the vocabulary in which its operations speak to a database (sans-I/O).

An operation (`gateway.store.writes`, `.views`, `.reports`, `.migrations`) is a generator: it
yields steps, receives each one's result and returns the operation's result. It does no I/O and
knows no engine. A driver runs it inside one transaction with `drive`, the one loop both engines
share, given an `Executor`: the driver's answer to each kind of step, and the only place where
the engines differ.

| step                          | what the database does                              | result          |
| ----------------------------- | --------------------------------------------------- | --------------- |
| `Query(sql, params, Row)`     | a SELECT (or … RETURNING): every row, as a `Row`    | `list[Row]`     |
| `QueryOne(sql, params, Row)`  | the same, the first row only                        | `Row \\| None`   |
| `Statement(sql, params)`      | an INSERT, UPDATE, DELETE or DDL statement          | rows changed    |
| `Batch(sql, rows)`            | one statement per parameter tuple (executemany)     | None            |
| `LockCase(transfer_id)`       | hold off other writers of this case until commit    | None            |
| `LockName(name)`              | hold off other writers naming this lock until commit | None           |
| `Wake(platform, acknowledged)` | on commit, tell every process: deliveries may wait, or one was acknowledged | None |

In an operation, `rows = yield from Query(...)` runs a step and gives its result, typed. A step
whose result is not needed is yielded plainly, `yield Statement(...)`: `yield from` makes a
generator per step (~0.1 µs), and an accept runs about fifteen steps.

SQL is written once, in what SQLite and PostgreSQL both accept, with `?` for each parameter in
order (never inside a string literal). What the engines say differently is the driver's to
render: the placeholder (PostgreSQL `%s`), a query's row lock (`lock=SkipLocked("d")`:
PostgreSQL `FOR UPDATE OF d SKIP LOCKED`; SQLite, with one writer, nothing), the schema's types
(`gateway.store.migrations.ColumnTypes`), and what `LockCase` and `Wake` mean.

Rows are named: every query declares its row type, a NamedTuple whose fields are the query's
column names in order (an expression gets one with AS), and the driver builds rows of it. The
driver compares the columns the database reports with the row type's fields the first time it
runs each query text (`check_columns`), so a query and its row type cannot drift apart unseen:
the contract suite runs every query on both engines.

Adding an operation: write a generator of steps next to its kind (`writes` for what changes the
log and deliveries, `views` or `reports` for what reads them), declare a NamedTuple for each query's
rows beside it, then add the method to the `Store` port (`gateway.store.port`) and to
`gateway.store.base.SQLStore` (one line: `self._write(...)` or `self._read(...)`). The drivers need
nothing new. Compose operations with `yield from` so that they share one transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeAlias, TypeVar

T = TypeVar("T")
R = TypeVar("R", bound=NamedTuple)


class SkipLocked(NamedTuple):
    """Lock the rows a query returns from table alias `of` until commit, skipping rows another
    transaction holds: concurrent claims take disjoint rows instead of waiting for each other."""

    of: str


# The steps are slotted classes, not frozen dataclasses: an accept builds about fifteen, and a
# frozen dataclass's __init__ costs several times more. Nothing keeps or changes them once run.

@dataclass(slots=True)
class Query(Generic[R]):
    """Every row of a query, each built as `row`."""

    sql: str
    params: Sequence[Any]
    row: type[R]
    lock: SkipLocked | None = None

    def run(self, executor: Executor) -> Awaitable[list[R]]:
        return executor.query(self)

    def __iter__(self) -> Generator[Step, Any, list[R]]:
        rows: list[R] = yield self
        return rows


@dataclass(slots=True)
class QueryOne(Generic[R]):
    """The first row of a query built as `row`, or None."""

    sql: str
    params: Sequence[Any]
    row: type[R]

    def run(self, executor: Executor) -> Awaitable[R | None]:
        return executor.query_one(self)

    def __iter__(self) -> Generator[Step, Any, R | None]:
        row: R | None = yield self
        return row


@dataclass(slots=True)
class Statement:
    """One statement; its result is the number of rows it changed."""

    sql: str
    params: Sequence[Any] = ()

    def run(self, executor: Executor) -> Awaitable[int]:
        return executor.statement(self)

    def __iter__(self) -> Generator[Step, Any, int]:
        changed: int = yield self
        return changed


@dataclass(slots=True)
class Batch:
    """One statement run once per tuple of `rows` (none: nothing runs)."""

    sql: str
    rows: Sequence[Sequence[Any]]

    def run(self, executor: Executor) -> Awaitable[None]:
        return executor.batch(self)

    def __iter__(self) -> Generator[Step, Any, None]:
        yield self


@dataclass(slots=True)
class LockCase:
    """Writers of this case wait for each other from here until their transactions end, so that
    each decides on the case as the one before it committed it."""

    transfer_id: str

    def run(self, executor: Executor) -> Awaitable[None]:
        return executor.lock_case(self)

    def __iter__(self) -> Generator[Step, Any, None]:
        yield self


@dataclass(slots=True)
class LockName:
    """Writers that take the lock of this name wait for each other from here until their
    transactions end. For what is not one case: the suspended-record index locks a person
    (`gateway.core.personkeys.lock_names`), so that a record and an enrollment of that person,
    arriving at once on two replicas, are matched by whichever commits second."""

    name: str

    def run(self, executor: Executor) -> Awaitable[None]:
        return executor.lock_name(self)

    def __iter__(self) -> Generator[Step, Any, None]:
        yield self


@dataclass(slots=True)
class Wake:
    """Once this transaction commits, every gateway process sharing the store hears that
    `platform` may have deliveries, or, with `acknowledged`, that it acknowledged that message
    (the subscription that holds it, wherever it is, has room again)."""

    platform: str
    acknowledged: str = ""

    def run(self, executor: Executor) -> Awaitable[None]:
        return executor.wake(self)

    def __iter__(self) -> Generator[Step, Any, None]:
        yield self


Step: TypeAlias = Query[Any] | QueryOne[Any] | Statement | Batch | LockCase | LockName | Wake
Steps: TypeAlias = Generator[Step, Any, T]  # an operation: yields steps, returns a T


class Executor(Protocol):
    """A driver's answer to each step, on one connection inside one open transaction. Database
    errors propagate as the driver's library raises them; the driver maps them once, around the
    transaction."""

    async def query(self, step: Query[R]) -> list[R]: ...

    async def query_one(self, step: QueryOne[R]) -> R | None: ...

    async def statement(self, step: Statement) -> int: ...

    async def batch(self, step: Batch) -> None: ...

    async def lock_case(self, step: LockCase) -> None: ...

    async def lock_name(self, step: LockName) -> None: ...

    async def wake(self, step: Wake) -> None: ...


async def drive(operation: Steps[T], executor: Executor) -> T:
    """Run `operation` to its end, each step by `executor`; its return value, or what a step or
    the operation raised.

    The one loop of both engines. PostgreSQL awaits it on the event loop; SQLite, whose executor
    never suspends, runs it to completion on its writer or reader thread with `run_now`. Measured
    with executors that do nothing, an accept's fourteen steps cost 4.7 µs through this loop
    (five results taken with `yield from`), the same as through the plain loop and untyped tuples
    it replaced.
    """
    result: Any = None
    while True:
        try:
            step = operation.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        result = await step.run(executor)


def run_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (`drive` with an executor that answers every step at
    once, as SQLite's does) to its end on this thread, without an event loop.

    Raises: whatever the coroutine raises; RuntimeError if it suspends after all (it is closed
    first, so nothing is left half run).
    """
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("a step waited on something: run_now takes only executors that answer at once")


class ColumnsMismatch(TypeError):
    """A query's columns are not its row type's fields: a defect in the query or its row type."""


def check_columns(step: Query[Any] | QueryOne[Any], names: Sequence[str]) -> None:
    """Raise ColumnsMismatch unless `names`, the columns the database says `step` returns, are
    the fields of its row type, in order. A driver checks each query text once, at its first run."""
    if tuple(names) != step.row._fields:
        raise ColumnsMismatch(f"{step.row.__name__} has fields {', '.join(step.row._fields)} but its query"
                              f" returns {', '.join(names)}: {step.sql[:200]}")


def marks(count: int) -> str:
    """`count` placeholders for an IN list: `?, ?, ?`."""
    return ", ".join("?" * count)

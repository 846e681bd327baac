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
| `Wake(platform, ack, when)` | on commit, tell every process: deliveries may wait, or `ack` was acknowledged | None |
| `Prefetch(*queries)`          | run these queries now; their rows are taken later   | None            |

A Wake with `when` (a query) is sent only if that query finds a row.

In an operation, `rows = yield from Query(...)` runs a step and gives its result, typed. A step
whose result is not needed is yielded plainly, `yield Statement(...)`: `yield from` makes a
generator per step (~0.1 µs), and an accept runs about fifteen steps. That difference is also what
a pipelining driver reads (`drive_together`): it sends a step yielded plainly without waiting for
the database, and waits only where an operation takes a result. Queries whose rows are all needed
before the next decision are prefetched together, `yield Prefetch(a, b)`, then taken one by one,
`rows = yield from a`: one round trip for all of them where the driver pipelines. A step marked
`last=True` is the operation's last (see LAST below): a pipelining driver may commit with it.

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
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, Protocol, TypeAlias, TypeVar

T = TypeVar("T")
R = TypeVar("R", bound=NamedTuple)


class SkipLocked(NamedTuple):
    """Lock the rows a query returns from table alias `of` until commit, skipping rows another
    transaction holds: concurrent claims take disjoint rows instead of waiting for each other.
    The lock goes at the end of the query's text, or where the text holds `ROW_LOCK` (a lock taken
    by a subquery, as in an UPDATE of the rows a SELECT picks)."""

    of: str


ROW_LOCK = "/* row lock */"  # where a query's SkipLocked goes, if not at its end (a comment to SQLite)

# LAST. A step marked `last=True` is its operation's last: the operation takes its result and
# yields nothing more, and whatever it raises then leaves nothing of its own to undo (an
# acknowledgement of an unknown delivery changed no row). A pipelining driver may then send the
# commit with it: when every operation of a transaction waits on its last step, the transaction
# costs one round trip for that step and its commit together.


# The steps are slotted classes, not frozen dataclasses: an accept builds about fifteen, and a
# frozen dataclass's __init__ costs several times more. Nothing keeps or changes them once run.

@dataclass(slots=True)
class Query(Generic[R]):
    """Every row of a query, each built as `row`."""

    sql: str
    params: Sequence[Any]
    row: type[R]
    lock: SkipLocked | None = None
    last: bool = False  # the operation's last step (see LAST)

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
    last: bool = False  # the operation's last step (see LAST)

    def run(self, executor: Executor) -> Awaitable[R | None]:
        return executor.query_one(self)

    def __iter__(self) -> Generator[Step, Any, R | None]:
        row: R | None = yield self
        return row


@dataclass(slots=True)
class Statement:
    """One statement; its result is the number of rows it changed (wanted only when the operation
    takes it with `yield from`: a pipelining driver need not wait for a statement yielded plainly)."""

    sql: str
    params: Sequence[Any] = ()
    last: bool = False  # the operation's last step (see LAST)
    wanted: bool = field(default=False, init=False, repr=False, compare=False)

    def run(self, executor: Executor) -> Awaitable[int]:
        return executor.statement(self)

    def __iter__(self) -> Generator[Step, Any, int]:
        self.wanted = True
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
    # Only if this query finds a row, asked where the wake-up is sent (in the transaction, before
    # the steps after it): the operation need not wait for an answer to decide whether to wake.
    when: Query[Any] | None = None

    def run(self, executor: Executor) -> Awaitable[None]:
        return executor.wake(self)

    def __iter__(self) -> Generator[Step, Any, None]:
        yield self


class Prefetch:
    """Run these queries now, in this order; the operation takes each one's rows later with
    `yield from query` (before yielding any other step that changes what they read). A driver that
    pipelines sends them together and waits once for all of them."""

    __slots__ = ("queries",)

    def __init__(self, *queries: Query[Any] | QueryOne[Any]) -> None:
        self.queries = queries

    def run(self, executor: Executor) -> Awaitable[None]:
        return executor.prefetch(self)

    def __iter__(self) -> Generator[Step, Any, None]:
        yield self


Step: TypeAlias = Query[Any] | QueryOne[Any] | Statement | Batch | LockCase | LockName | Wake | Prefetch
Steps: TypeAlias = Generator[Step, Any, T]  # an operation: yields steps, returns a T
# What a write operation touches that another in the same transaction must not (a case, a message
# id, a person's open case, a platform's claims): a driver that commits writes together
# (PostgreSQL) puts writes sharing a key in different transactions, one after the other.
Keys: TypeAlias = tuple[str, ...]


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

    async def prefetch(self, step: Prefetch) -> None:
        """Run `step.queries` now; `query` and `query_one` answer each one's step from what they read."""


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


class Pending(Protocol):
    """A step a `Pipeline` has sent whose result the operation wants."""

    @property
    def ready(self) -> bool:
        """Its result has arrived (a sync came after it was sent)."""

    def result(self) -> Any:
        """Its result. Only once `ready`."""


class Pipeline(Protocol):
    """A driver's connection in pipeline mode, inside one open transaction: steps are queued
    without waiting, and a sync sends them and waits for the results of everything queued so
    far. Database errors propagate from the sync, as the driver's library raises them: the
    transaction is then lost."""

    def send(self, step: Step) -> Pending | None:
        """Queue `step`; its Pending if the operation wants its result, else None (nothing to wait for)."""

    async def sync(self, *, commit: bool = False) -> None:
        """Wait until every step sent has run; with `commit`, commit the transaction in the same
        round trip (nothing may be sent after)."""


@dataclass(slots=True)
class Outcome:
    """How one operation of `drive_together` ended: its value or its error, and whether it had
    sent a step that may have changed rows (its error then leaves writes behind to undo)."""

    value: Any = None
    error: Exception | None = None
    wrote: bool = False


async def drive_together(operations: Sequence[Steps[Any]], pipeline: Pipeline) -> tuple[list[Outcome], bool]:
    """Run `operations` in one transaction, in lockstep: each runs until it wants a result, their
    steps are sent together, and one sync answers all of them; then each runs on to its next
    result. So the round trips of a batch are those of its longest operation (an accept: three),
    not the sum of every step's.

    An operation's own error (a refusal, a rule) ends that operation alone, in its `Outcome`;
    whether it had written first is recorded there, for the driver to undo by running again.
    Errors of the pipeline (the database's) propagate: the transaction is lost.

    When every operation still running waits on its `last` step and none has failed after writing,
    the sync that answers them commits too (`LAST`): whether it did is what this returns with the
    outcomes. An operation that yields a step after its last one fails with RuntimeError.
    """
    outcomes = [Outcome() for _ in operations]
    committed = False
    sent: list[Any] = [None] * len(operations)  # what each operation is sent when it resumes
    running = list(range(len(operations)))
    while running:
        waiting: list[tuple[int, Step, Pending]] = []
        for i in running:
            operation, outcome, value = operations[i], outcomes[i], sent[i]
            while True:
                try:
                    step = operation.send(value)
                except StopIteration as done:
                    outcome.value = done.value
                    break
                except Exception as exc:
                    outcome.error = exc
                    break
                if committed:
                    operation.close()
                    outcome.error = RuntimeError(f"a step after the last: {type(step).__name__}")
                    break
                if not outcome.wrote and _may_write(step):
                    outcome.wrote = True
                pending = pipeline.send(step)
                if pending is None:
                    value = None
                elif pending.ready:
                    value = pending.result()
                    outcome.wrote = outcome.wrote or _changed(step, value)
                else:
                    waiting.append((i, step, pending))
                    break
        if waiting:
            committed = (all(_last(step) for _, step, _ in waiting)
                         and not any(o.error is not None and o.wrote for o in outcomes))
            await pipeline.sync(commit=committed)
            for i, step, pending in waiting:
                sent[i] = value = pending.result()
                outcomes[i].wrote = outcomes[i].wrote or _changed(step, value)
        running = [i for i, _, _ in waiting]
    return outcomes, committed


def _may_write(step: Step) -> bool:
    """Whether sending `step` may change rows: a statement yielded plainly, a batch of rows, or a
    query that is not a SELECT (an UPDATE … RETURNING). A statement taken with `yield from` is
    judged by its result instead (`_changed`): one that changed nothing leaves nothing to undo, as
    an acknowledgement of an unknown delivery does."""
    if isinstance(step, Statement):
        return not step.wanted
    if isinstance(step, Batch):
        return bool(step.rows)
    if isinstance(step, Query | QueryOne):
        return step.sql.lstrip()[:6].upper() != "SELECT"
    if isinstance(step, Prefetch):
        return any(_may_write(query) for query in step.queries)
    return False


def _last(step: Step) -> bool:
    return isinstance(step, Query | QueryOne | Statement) and step.last


def _changed(step: Step, result: Any) -> bool:
    return isinstance(step, Statement) and bool(result)


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

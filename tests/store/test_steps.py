"""The steps vocabulary and its one loop, and what the operations ask of a database below the port:
how many queries, and rows named as their queries name them, on both engines."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import replace
from typing import Any, NamedTuple, TypeVar

import pytest

from gateway.core.case import Case, CaseIndex, Decision
from gateway.store import CaseQuery, views
from gateway.store.pgwire import render
from gateway.store.steps import (
    ROW_LOCK,
    Batch,
    ColumnsMismatch,
    LockCase,
    Prefetch,
    Query,
    QueryOne,
    R,
    SkipLocked,
    Statement,
    Step,
    Steps,
    Wake,
    drive,
    drive_together,
    run_now,
)
from mitransfer.v1 import envelope_pb2, tracking_pb2
from tests.store.support import Clock, Factory, incoming, open_case, receipt_for, same

T = TypeVar("T")


class _Pair(NamedTuple):
    a: int
    b: str


class _Recorder:
    """An executor that answers at once from a script, noting each step it is given."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    async def query(self, step: Query[R]) -> list[R]:
        self.steps.append(step)
        return [tuple.__new__(step.row, (1, "x")), tuple.__new__(step.row, (2, "y"))]

    async def query_one(self, step: QueryOne[R]) -> R | None:
        self.steps.append(step)
        return None

    async def statement(self, step: Statement) -> int:
        self.steps.append(step)
        return 7

    async def batch(self, step: Batch) -> None:
        self.steps.append(step)

    async def lock_case(self, step: LockCase) -> None:
        self.steps.append(step)

    async def wake(self, step: Wake) -> None:
        self.steps.append(step)


def _operation() -> Steps[tuple[list[_Pair], _Pair | None, int]]:
    yield from LockCase("t-1")
    pairs = yield from Query("SELECT a, b FROM t", (), _Pair)
    none = yield from QueryOne("SELECT a, b FROM t WHERE a = ?", (3,), _Pair)
    changed = yield from Statement("UPDATE t SET b = ?", ("z",))
    yield from Batch("INSERT INTO t VALUES (?, ?)", [(1, "a"), (2, "b")])
    yield from Wake("zhejiang")
    return pairs, none, changed


def test_drive_runs_each_step_and_sends_its_result_back() -> None:
    executor = _Recorder()
    pairs, none, changed = run_now(drive(_operation(), executor))
    assert [p.b for p in pairs] == ["x", "y"] and none is None and changed == 7
    assert [type(s).__name__ for s in executor.steps] == ["LockCase", "Query", "QueryOne", "Statement", "Batch",
                                                          "Wake"]


def test_an_error_of_a_step_ends_the_operation() -> None:
    class Failing(_Recorder):
        async def statement(self, step: Statement) -> int:
            raise RuntimeError("disk")

    with pytest.raises(RuntimeError, match="disk"):
        run_now(drive(_operation(), Failing()))


def test_run_now_refuses_a_step_that_waits() -> None:
    class Waiting(_Recorder):
        async def lock_case(self, step: LockCase) -> None:
            await _suspend()

    with pytest.raises(RuntimeError, match="waited"):
        run_now(drive(_operation(), Waiting()))


class _Answer:
    def __init__(self, pipeline: _Pipeline, value: Any) -> None:
        self._pipeline, self._epoch, self._value = pipeline, pipeline.syncs, value

    @property
    def ready(self) -> bool:
        return self._pipeline.syncs > self._epoch

    def result(self) -> Any:
        assert self.ready, "a result taken before the sync that brings it"
        return self._value


class _Pipeline:
    """A pipeline that answers from a script at the next sync, noting what it was sent between syncs."""

    def __init__(self) -> None:
        self.syncs = 0
        self.rounds: list[list[str]] = [[]]  # what each round trip carried
        self._ahead: dict[int, _Answer] = {}

    def send(self, step: Step) -> _Answer | None:
        if isinstance(step, Prefetch):
            for query in step.queries:
                self._ahead[id(query)] = self._send(query)
            return None
        if id(step) in self._ahead:
            return self._ahead.pop(id(step))
        return self._send(step)

    def _send(self, step: Step) -> _Answer | None:
        self.rounds[-1].append(getattr(step, "sql", type(step).__name__))
        if isinstance(step, Query):
            return _Answer(self, [step.sql])
        if isinstance(step, QueryOne):
            return _Answer(self, step.sql)
        if isinstance(step, Statement) and step.wanted:
            return _Answer(self, 0 if "none" in step.sql else 1)
        return None

    async def sync(self, *, commit: bool = False) -> None:
        if commit:
            self.rounds[-1].append("COMMIT")
        self.syncs += 1
        self.rounds.append([])


def _accept_like(name: str, fail_at: str = "") -> Steps[str]:
    """Three phases, as an accept: reads prefetched together, a head taken, the rest sent blind."""
    yield LockCase(name)
    a, b = QueryOne(f"SELECT {name} a", (), _Pair), QueryOne(f"SELECT {name} b", (), _Pair)
    yield Prefetch(a, b)
    first, second = (yield from a), (yield from b)
    if fail_at == "decision":
        raise RuntimeError(f"{name} refused")
    yield Statement(f"{name} write")
    head = yield from QueryOne(f"UPDATE {name} head", (), _Pair)
    if fail_at == "after writing":
        raise RuntimeError(f"{name} failed late")
    yield Statement(f"{name} append")
    yield Wake(name)
    return f"{first} {second} {head}"


async def test_operations_run_together_wait_only_for_the_results_they_take() -> None:
    pipeline = _Pipeline()
    outcomes, committed = await drive_together([_accept_like("x"), _accept_like("y"), _accept_like("z")], pipeline)
    assert not committed  # the driver commits what was sent after the last result taken
    assert [o.value for o in outcomes] == [f"SELECT {n} a SELECT {n} b UPDATE {n} head" for n in "xyz"]
    assert [o.error for o in outcomes] == [None] * 3 and all(o.wrote for o in outcomes)
    assert pipeline.syncs == 2  # the reads of all three, then their heads; the rest waits for the commit
    assert pipeline.rounds == [
        [step for n in "xyz" for step in ("LockCase", f"SELECT {n} a", f"SELECT {n} b")],
        [step for n in "xyz" for step in (f"{n} write", f"UPDATE {n} head")],
        [step for n in "xyz" for step in (f"{n} append", "Wake")],
    ]


async def test_an_operation_that_fails_ends_alone_and_says_whether_it_wrote() -> None:
    pipeline = _Pipeline()
    outcomes, _ = await drive_together(
        [_accept_like("x", fail_at="decision"), _accept_like("y"), _accept_like("z", fail_at="after writing")],
        pipeline)
    assert [str(o.error) for o in outcomes] == ["x refused", "None", "z failed late"]
    assert [o.wrote for o in outcomes] == [False, True, True]
    assert outcomes[1].value == "SELECT y a SELECT y b UPDATE y head"
    assert pipeline.rounds[-1] == ["y append", "Wake"]


async def test_a_statement_taken_for_its_count_wrote_only_if_it_changed_rows() -> None:
    def counted(sql: str) -> Steps[int]:
        changed = yield from Statement(sql)
        if not changed:
            raise LookupError("nothing there")
        return changed

    outcomes, _ = await drive_together([counted("UPDATE none"), counted("UPDATE one")], _Pipeline())
    assert [(type(o.error).__name__, o.wrote) for o in outcomes] == [("LookupError", False), ("NoneType", True)]


def _ack_like(sql: str) -> Steps[int]:
    """An acknowledgement's shape: a wake-up sent blind, then one statement taken last."""
    yield Wake("p")
    changed = yield from Statement(sql, last=True)
    if not changed:
        raise LookupError("nothing there")
    return changed


async def test_operations_waiting_on_their_last_steps_commit_in_the_same_round_trip() -> None:
    pipeline = _Pipeline()
    outcomes, committed = await drive_together([_ack_like("UPDATE one"), _ack_like("UPDATE none")], pipeline)
    assert committed and pipeline.syncs == 1
    assert pipeline.rounds[0] == ["Wake", "UPDATE one", "Wake", "UPDATE none", "COMMIT"]
    assert [(type(o.error).__name__, o.wrote) for o in outcomes] == [("NoneType", True), ("LookupError", False)]


async def test_a_last_step_beside_an_operation_not_at_its_last_commits_later() -> None:
    pipeline = _Pipeline()
    outcomes, committed = await drive_together([_ack_like("UPDATE one"), _accept_like("x")], pipeline)
    assert not committed and pipeline.syncs == 2 and not any("COMMIT" in r for r in pipeline.rounds)
    assert [o.error for o in outcomes] == [None, None]


async def test_nothing_commits_with_a_last_step_after_another_operation_failed_having_written() -> None:
    def fails_after_writing() -> Steps[None]:
        yield Statement("INSERT x")
        raise RuntimeError("late")

    pipeline = _Pipeline()
    outcomes, committed = await drive_together([fails_after_writing(), _ack_like("UPDATE one")], pipeline)
    assert not committed and outcomes[0].wrote and str(outcomes[0].error) == "late"


async def test_a_step_after_the_last_is_a_defect_of_its_operation() -> None:
    def goes_on() -> Steps[None]:
        yield from Statement("UPDATE one", last=True)
        yield Statement("UPDATE more")

    outcomes, committed = await drive_together([goes_on()], _Pipeline())
    assert committed and isinstance(outcomes[0].error, RuntimeError)


@pytest.mark.parametrize(("portable", "lock", "numbered"), [
    ("SELECT a FROM t WHERE b = ? AND c IN (?, ?)", None, "SELECT a FROM t WHERE b = $1 AND c IN ($2, $3)"),
    ("SELECT a FROM t WHERE b LIKE '50%?' AND c = ?", None, "SELECT a FROM t WHERE b LIKE '50%?' AND c = $1"),
    ("SELECT 'it''s ?' AS a, b % 2 AS b FROM t", None, "SELECT 'it''s ?' AS a, b % 2 AS b FROM t"),
    ("-- isn't it? a comment\nDELETE FROM t WHERE a = ?", None, "-- isn't it? a comment\nDELETE FROM t WHERE a = $1"),
    ("SELECT d.a FROM d JOIN m ON m.a = d.a LIMIT ?", SkipLocked("d"),
     "SELECT d.a FROM d JOIN m ON m.a = d.a LIMIT $1 FOR UPDATE OF d SKIP LOCKED"),
    (f"WITH p AS (SELECT d.a FROM d LIMIT ? {ROW_LOCK}) UPDATE d SET b = ? WHERE a IN (SELECT a FROM p) RETURNING a",
     SkipLocked("d"),
     "WITH p AS (SELECT d.a FROM d LIMIT $1 FOR UPDATE OF d SKIP LOCKED) UPDATE d SET b = $2 WHERE a IN"
     " (SELECT a FROM p) RETURNING a"),
])
def test_postgresql_renders_placeholders_and_row_locks(portable: str, lock: SkipLocked | None, numbered: str) -> None:
    assert render(portable, lock) == numbered.encode()


class _Wrong(NamedTuple):
    transfer_id: str
    opened: int  # the query says opened_at


def _wrong_names() -> Steps[list[_Wrong]]:
    return (yield from Query("SELECT transfer_id, opened_at FROM cases", (), _Wrong))


def _wrong_count() -> Steps[_Wrong | None]:
    return (yield from QueryOne("SELECT transfer_id FROM cases", (), _Wrong))


async def test_a_query_whose_row_type_names_other_columns_is_refused(
    store_and_clock: tuple[Any, Clock],
) -> None:
    store, _ = store_and_clock
    await open_case(store)
    with pytest.raises(ColumnsMismatch, match="opened_at"):
        await store.read(_wrong_names)
    with pytest.raises(ColumnsMismatch):
        await store.read(_wrong_count)


def _counting(operation: Steps[T], asked: list[Step]) -> Steps[T]:
    """`operation`, noting every step it asks for."""
    result: Any = None
    while True:
        try:
            step = operation.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        asked.append(step)
        result = yield step


async def test_case_views_are_read_in_three_queries_however_many_cases(
    factory_and_clock: tuple[Factory, Clock],
) -> None:
    make, clock = factory_and_clock
    store = make()
    await store.open()
    try:
        def sent(case: Case | None, _index: CaseIndex) -> Decision:
            assert case is not None
            return Decision(replace(case, state=tracking_pb2.CASE_STATE_TABLE_SENT, balance_fen=0))

        cases = [await open_case(store) for _ in range(12)]
        for m in cases[::3]:  # a second message, and a stage finished, in some of them
            clock.advance(60)
            table = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE,
                             body=m.message_id.encode())
            await store.accept(table, sent, receipt_for(table))
        undelivered = replace(incoming(cases[1].transfer_id, body=b"to no platform"), deliveries=())
        await store.accept(undelivered, same, receipt_for(undelivered))  # the case's, but no MessageView
        one_by_one = [await store.get_case(m.transfer_id) for m in cases]
        listed_steps: list[Step] = []
        listed = await store.read(lambda: _counting(views.list_cases(CaseQuery()), listed_steps))
    finally:
        await store.close()
    assert len(listed_steps) == 3
    ordered = sorted((v for v in one_by_one if v is not None), key=lambda v: (v.opened_at, v.case.transfer_id))
    assert [(v.case, v.stages) for v in listed] == [(v.case, v.stages) for v in ordered]  # in the listing's order
    assert all(not v.messages for v in listed)
    assert sum(len(v.messages) for v in ordered) == 16
    assert sum(len(v.case.messages) for v in ordered) == 17


class _Suspend:
    def __await__(self) -> Generator[None, None, None]:
        yield


async def _suspend() -> None:
    await _Suspend()

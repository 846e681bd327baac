"""What only the PostgreSQL store shows: several replicas on one database, deciding, claiming and
waking each other; writes committed together, in few round trips, each as if alone."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import NamedTuple

import psycopg
import pytest

from gateway.core.case import Case, CaseIndex, Decision, FundStatus
from gateway.core.errors import NotFound, RuleViolation
from gateway.store import AcceptOutcome, Decide, IncomingMessage
from gateway.store.base import SQLStore
from gateway.store.pgwire import Wire
from gateway.store.steps import Query, QueryOne, Statement, Steps
from mitransfer.v1 import envelope_pb2
from tests.store.support import T0, Clock, incoming, named, open_case, opened, postgres_store, receipt_for
from tests.support import postgres_url


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[tuple[SQLStore, SQLStore, Clock]]:
    """Two stores on one schema, opened at once (their migrations serialize themselves)."""
    clock = Clock()
    with postgres_store(tmp_path, clock) as make:
        a, b = make(), make()
        await asyncio.gather(a.open(), b.open())
        try:
            yield a, b, clock
        finally:
            await asyncio.gather(a.close(), b.close())


async def test_two_replicas_racing_move_each_case_once(replicas: tuple[SQLStore, SQLStore, Clock]) -> None:
    """Rival fund transfers of one case, sent to both at once, and the same message sent to both
    at once, still make one movement and one log entry."""
    a, b, _ = replicas
    cases = [await open_case(a) for _ in range(20)]

    def funds(case: Case | None, _index: CaseIndex) -> Decision:
        return Decision(case or opened(cases[0]), fund_status=FundStatus.SENT)

    outcomes = []
    for c in cases:
        first, rival = (incoming(c.transfer_id, kind=envelope_pb2.MESSAGE_KIND_FUND_TRANSFER, body=body,
                                 amount=500) for body in (b"f1", b"f2"))
        outcomes += await asyncio.gather(
            a.accept(first, funds, receipt_for(first)), b.accept(rival, funds, receipt_for(rival)),
            b.accept(first, funds, receipt_for(first)), return_exceptions=True)
    accepted = [o for o in outcomes if isinstance(o, AcceptOutcome) and not o.replayed]
    assert len(accepted) == len(cases)  # one per case; every other answer a refusal or a replay
    assert all(isinstance(o, AcceptOutcome | RuleViolation) for o in outcomes), outcomes
    lines = await a.settlement(T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=1))
    assert sum(line.transfers for line in lines) == len(cases)
    assert sum(line.sent_fen for line in lines) == 500 * len(cases)
    sequences = sorted(o.sequence for o in outcomes if isinstance(o, AcceptOutcome))
    assert len(set(sequences)) == len(accepted)  # replays carry the original sequence


async def test_two_replicas_opening_cases_for_one_person_open_one(
    replicas: tuple[SQLStore, SQLStore, Clock],
) -> None:
    """Both may find no open case before either commits: the unique index decides, and its
    refusal is the rule's own."""
    a, b, _ = replicas
    for round_ in range(10):
        person = f"person-{round_}".encode()
        rivals = [incoming(f"t-{round_}-{side}", body=f"{round_}{side}".encode(),
                           opens_case_of=(named(person), "320100"))
                  for side in "ab"]
        results = await asyncio.gather(
            *(store.accept(m, _open_unless_open(m, person), receipt_for(m))
              for store, m in zip((a, b), rivals, strict=True)),
            return_exceptions=True)
        assert sum(isinstance(r, AcceptOutcome) for r in results) == 1, results
        refused = [r for r in results if not isinstance(r, AcceptOutcome)]
        assert all(isinstance(r, RuleViolation) and r.reason == "CASE_ALREADY_OPEN" for r in refused), refused


def _open_unless_open(m: IncomingMessage, person: bytes) -> Decide:
    def decide(case: Case | None, index: CaseIndex) -> Decision:
        if index.open_case_for(named(person), m.sender) is not None:
            raise RuleViolation("this person has an open case here", reason="CASE_ALREADY_OPEN")
        return Decision(case or opened(m, person))
    return decide


async def test_replicas_claim_disjoint_deliveries(replicas: tuple[SQLStore, SQLStore, Clock]) -> None:
    a, b, clock = replicas
    cases = [await open_case(a) for _ in range(40)]
    lease = dt.timedelta(seconds=30)
    claims = await asyncio.gather(*(
        store.claim_deliveries("zhejiang", None, limit=8, lease=lease, max_attempts=3, now=clock())
        for store in (a, b, a, b, a, b)))
    claimed = [d.message_id for claim in claims for d in claim.deliveries]
    assert len(claimed) == len(set(claimed))  # no delivery leased twice
    assert set(claimed) <= {m.message_id for m in cases}


async def test_a_commit_wakes_the_other_replicas(replicas: tuple[SQLStore, SQLStore, Clock]) -> None:
    a, b, _ = replicas
    heard: asyncio.Queue[tuple[str | None, str | None]] = asyncio.Queue()
    b.on_wake(lambda platform, acknowledged: heard.put_nowait((platform, acknowledged)))
    for attempt in range(50):  # until b's listener has connected: a wake-up before it is not heard
        m = incoming(f"t-wake-{attempt}", receiver_platform="anhui", receiver="340100")
        await a.accept(m, lambda case, _i, m=m: Decision(case or opened(m)), receipt_for(m))
        if await _news(heard, 0.2) != ("anhui", None):
            continue
        with pytest.raises(NotFound):  # an acknowledgement of nothing tells nobody anything
            await a.ack_delivery("anhui", str(uuid.uuid4()), T0)
        await a.ack_delivery("anhui", m.message_id, T0)  # an acknowledgement names its message
        assert await _news(heard, 5) == ("anhui", m.message_id)
        return
    pytest.fail("no wake-up reached the other replica")


async def test_a_claim_and_an_acknowledgement_take_one_round_trip_each(
        store: SQLStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each is one statement, its operation's last step: its commit goes in the same round trip."""
    cases = [await open_case(store) for _ in range(3)]
    syncs = 0
    sync = Wire.sync

    async def counted(self: Wire) -> None:
        nonlocal syncs
        syncs += 1
        await sync(self)

    monkeypatch.setattr(Wire, "sync", counted)
    claim = await store.claim_deliveries("zhejiang", None, limit=8, lease=dt.timedelta(seconds=30), max_attempts=3,
                                         now=T0)
    assert sorted(d.message_id for d in claim.deliveries) == sorted(m.message_id for m in cases) and syncs == 1
    await asyncio.gather(*(store.ack_delivery("zhejiang", m.message_id, T0) for m in cases))
    assert syncs <= 1 + len(cases)  # one each, or fewer when they commit together
    with pytest.raises(NotFound):
        await store.ack_delivery("zhejiang", str(uuid.uuid4()), T0)
    assert await store.acknowledged("zhejiang", [m.message_id for m in cases]) == {m.message_id for m in cases}


async def test_replicas_publish_one_checkpoint_per_tree_size(tmp_path: Path) -> None:
    """Two replicas publishing at once: one extends the tree and signs, the other finds it done."""
    with postgres_store(tmp_path, Clock()) as make:
        await _publish_at_once(make)


async def _publish_at_once(make: Callable[[], SQLStore]) -> None:
    a, b = make(), make()
    await a.open()
    await b.open()
    try:
        for _ in range(5):
            await open_case(a)
            await open_case(b)
        sign = lambda size, root: f"{size}".encode()  # noqa: E731
        results = await asyncio.gather(a.publish_checkpoint(sign), b.publish_checkpoint(sign))
        published = [r for r in results if r is not None]
        assert len(published) == 1 and published[0].tree_size == 10
        assert await a.latest_checkpoint() == await b.latest_checkpoint() == published[0]
    finally:
        await a.close()
        await b.close()


async def _news(heard: asyncio.Queue[tuple[str | None, str | None]], timeout: float) -> tuple[str, str | None] | None:
    """The next wake-up naming a platform; ("look everywhere", sent when the listener connects,
    is skipped); None if none comes in time."""
    while True:
        try:
            platform, acknowledged = await asyncio.wait_for(heard.get(), timeout)
        except TimeoutError:
            return None
        if platform is not None:
            return platform, acknowledged
@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLStore]:
    with postgres_store(tmp_path, Clock()) as make:
        opened_store = make()
        await opened_store.open()
        try:
            yield opened_store
        finally:
            await opened_store.close()


class _Transactions:
    """The round trips of each transaction the store's wires run (BEGIN to COMMIT or ROLLBACK)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.syncs: list[int] = []  # per transaction ended
        self._open: dict[int, int] = {}
        command, sync = Wire.command, Wire.sync

        def counted_command(wire: Wire, sql: bytes) -> None:
            if sql == b"BEGIN":
                self._open[id(wire)] = 0
            elif sql in (b"COMMIT", b"ROLLBACK") and id(wire) in self._open:
                self.syncs.append(self._open.pop(id(wire)) + 1)  # with the sync that ends it
            command(wire, sql)

        async def counted_sync(wire: Wire) -> None:
            if id(wire) in self._open:
                self._open[id(wire)] += 1
            await sync(wire)

        monkeypatch.setattr(Wire, "command", counted_command)
        monkeypatch.setattr(Wire, "sync", counted_sync)


async def test_accepts_queued_together_commit_together_in_three_round_trips(
        store: SQLStore, monkeypatch: pytest.MonkeyPatch) -> None:
    transactions = _Transactions(monkeypatch)
    messages = [incoming(f"t-batch-{i}") for i in range(20)]
    outcomes = await asyncio.gather(*(store.accept(m, lambda c, _i, m=m: Decision(c or opened(m)), receipt_for(m))
                                      for m in messages))
    assert sorted(o.sequence for o in outcomes) == list(range(1, 21))  # gapless, one each
    assert len(transactions.syncs) <= 2  # one writer took what was queued; the other, anything after
    assert all(syncs == 3 for syncs in transactions.syncs)  # the reads, the head, the commit


def _scratch(row: int, *, fail: bool = False) -> Steps[int]:
    yield Statement("INSERT INTO fund_totals (outbound_province, inbound_province, status, amount_fen, transfers)"
                    " VALUES ('00', '00', ?, 1, 1)", (f"row {row}",))
    if fail:
        raise RuntimeError(f"row {row} failed after writing")
    return row


async def test_a_write_failing_after_it_wrote_is_undone_alone(store: SQLStore) -> None:
    results = await asyncio.gather(*(store.write(lambda i=i: _scratch(i, fail=i == 2)) for i in range(5)),
                                   return_exceptions=True)
    assert [r if isinstance(r, int) else str(r) for r in results] == [0, 1, "row 2 failed after writing", 3, 4]
    assert await store.read(_scratch_rows) == ["row 0", "row 1", "row 3", "row 4"]


class _Status(NamedTuple):
    status: str


def _scratch_rows() -> Steps[list[str]]:
    rows = yield from Query("SELECT status FROM fund_totals WHERE outbound_province = '00' ORDER BY status", (),
                            _Status)
    return [r.status for r in rows]


class _Txid(NamedTuple):
    txid: int


def _transaction_id() -> Steps[int]:
    row = yield from QueryOne("SELECT txid_current() AS txid", (), _Txid)
    assert row is not None
    return row.txid


async def test_writes_sharing_a_key_never_share_a_transaction(store: SQLStore) -> None:
    """And a write that states no keys (None) shares its transaction with no other."""
    keys: list[tuple[str, ...] | None] = [("a",), ("b",), ("a", "c"), None, ("c",), ("d",), ("b", "d"), ()] * 3
    txids = await asyncio.gather(*(store.write(_transaction_id, keys=k) for k in keys))
    for i, (key_i, txid_i) in enumerate(zip(keys, txids, strict=True)):
        for key_j, txid_j in list(zip(keys, txids, strict=True))[i + 1:]:
            if key_i is None or key_j is None or set(key_i) & set(key_j):
                assert txid_i != txid_j, (key_i, key_j)
    assert len(set(txids)) < len(txids)  # and the others did share


class _Pid(NamedTuple):
    pid: int


def _backend() -> Steps[int]:
    row = yield from QueryOne("SELECT pg_backend_pid() AS pid", (), _Pid)
    assert row is not None
    return row.pid


async def test_writers_whose_connections_died_meanwhile_write_on_new_ones(store: SQLStore) -> None:
    """A connection that failed before its transaction's COMMIT was sent committed nothing: the
    batch runs again on another, and no caller hears of it."""
    pids = set(await asyncio.gather(*(store.write(_backend) for _ in range(8))))
    with psycopg.connect(postgres_url(), autocommit=True) as conn:
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    opened_cases = await asyncio.gather(*(open_case(store) for _ in range(8)))
    assert len({m.transfer_id for m in opened_cases}) == 8
    assert not pids & set(await asyncio.gather(*(store.write(_backend) for _ in range(4))))


class _Slept(NamedTuple):
    slept: str


def _sleep(seconds: float) -> Steps[str]:
    row = yield from QueryOne("SELECT pg_sleep(?)::text AS slept", (seconds,), _Slept)
    assert row is not None
    return row.slept


async def test_a_read_cancelled_while_it_waits_leaves_the_store_whole(store: SQLStore) -> None:
    """A caller that goes away mid-read (a deadline, a drain) leaves a connection whose results are
    still coming: it is closed, never handed to the next read."""
    for _ in range(3):
        reading = asyncio.create_task(store.read(lambda: _sleep(0.3)))
        await asyncio.sleep(0.05)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
    assert await asyncio.wait_for(store.read(lambda: _sleep(0)), 5) == ""
    assert await asyncio.wait_for(open_case(store), 5)


async def test_a_connection_the_server_ends_between_syncs_fails_as_a_lost_connection() -> None:
    """A backend ended while its wire waits between syncs (a fast shutdown, pg_terminate_backend)
    sends its FATAL error unasked: the next sync meets a result no command was sent for."""
    url = postgres_url()
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        wire = Wire(conn, prepare=False)
        wire.command(b"BEGIN")
        await wire.sync()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        readable = asyncio.Event()  # the FATAL is on the socket before the sync
        asyncio.get_running_loop().add_reader(conn.pgconn.socket, readable.set)
        try:
            await asyncio.wait_for(readable.wait(), 10)
        finally:
            asyncio.get_running_loop().remove_reader(conn.pgconn.socket)
        with pytest.raises(psycopg.OperationalError, match="terminating connection"):
            await wire.sync()
        assert wire.broken  # its connection is closed, never used again
    finally:
        await conn.close()

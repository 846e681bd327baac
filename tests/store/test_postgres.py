"""What only the PostgreSQL store shows: several replicas on one database, deciding, claiming and
waking each other."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.core.case import Case, CaseIndex, Decision, FundStatus
from gateway.core.errors import RuleViolation
from gateway.store import AcceptOutcome, Decide, IncomingMessage
from gateway.store.base import SQLStore
from mitransfer.v1 import envelope_pb2
from tests.store.support import T0, Clock, incoming, open_case, opened, postgres_store, receipt_for


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
        rivals = [incoming(f"t-{round_}-{side}", body=f"{round_}{side}".encode(), opens_case_of=(person, "320100"))
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
        if index.open_case_for(person, m.sender) is not None:
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
        await a.ack_delivery("anhui", m.message_id, T0)  # an acknowledgement names its message
        assert await _news(heard, 5) == ("anhui", m.message_id)
        return
    pytest.fail("no wake-up reached the other replica")


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

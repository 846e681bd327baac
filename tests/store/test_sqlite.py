"""What only the SQLite store shows: its group commit when SQLite itself gives up mid-batch, and a
file it makes room for."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from gateway.core.case import Case, CaseIndex, Decision
from gateway.store import IncomingMessage
from gateway.store.sqlite import SQLiteConfig, SQLiteStore
from gateway.store.steps import QueryOne, Statement, Steps
from tests.store.support import SLA, Clock, incoming, open_case, opened, receipt_for


class _Pages(NamedTuple):
    page_count: int


def _page_count() -> Steps[_Pages | None]:
    return (yield from QueryOne("PRAGMA page_count", (), _Pages))


def _no_more_pages_than(pages: int) -> Steps[int]:
    return (yield from Statement(f"PRAGMA max_page_count = {int(pages)}"))


async def test_disk_full_mid_batch_leaves_no_half_committed_accepts(tmp_path: Path) -> None:
    """When SQLite itself rolls a batch's transaction back (disk full here), no later job of the
    batch may run on in autocommit: every caller that hears of a failure finds nothing stored."""
    store = SQLiteStore(SQLiteConfig(path=tmp_path / "full.db"), Clock(), SLA)
    await store.open()
    try:
        for _ in range(5):
            await open_case(store)
        pages = await store.write(_page_count)
        assert pages is not None
        await store.write(lambda: _no_more_pages_than(pages.page_count))  # on the writer's connection
        # Alternately a case whose first row needs new pages (a huge person key) and a small one
        # that fits in the pages there are.
        openings = [incoming(str(uuid.uuid4())) for _ in range(16)]

        def decide_for(i: int, m: IncomingMessage) -> Callable[[Case | None, CaseIndex], Decision]:
            person = b"p" * 6000 + m.transfer_id.encode() if i % 2 == 0 else None
            return lambda case, _index: Decision(case or opened(m, person))

        results = await asyncio.gather(
            *(store.accept(m, decide_for(i, m), receipt_for(m)) for i, m in enumerate(openings)),
            return_exceptions=True)
        assert any(isinstance(r, BaseException) for r in results)
        for m, result in zip(openings, results, strict=True):
            stored = await store.get_case(m.transfer_id)
            assert (stored is None) == isinstance(result, BaseException), result
    finally:
        await store.close()


async def test_the_store_creates_its_folder(tmp_path: Path) -> None:
    """`transfer-gateway migrate` on a fresh checkout opens the store before anything made var/."""
    store = SQLiteStore(SQLiteConfig(path=tmp_path / "var" / "deeper" / "gateway.db"), Clock(), SLA)
    await store.open()
    try:
        m = await open_case(store)
        assert await store.get_case(m.transfer_id) is not None
    finally:
        await store.close()


async def test_a_read_under_way_when_the_store_closes_finishes(tmp_path: Path) -> None:
    """Closing does not pull the connection from under a read already queued (a checkpoint's or a
    gauge's when the gateway stops): the read runs first, then the connection closes."""
    store = SQLiteStore(SQLiteConfig(path=tmp_path / "closing.db"), Clock(), SLA)
    await store.open()
    reading = asyncio.ensure_future(store.log_leaves())
    await asyncio.sleep(0)  # queued on the reader thread
    await store.close()
    assert await reading == 0

"""Handling deliveries concurrently without reordering a case.

Deliveries of one case must be handled in the order they came (the table before the fund
transfer); different cases are independent. `CaseOrderedRunner` runs up to `limit` jobs at once,
one at a time per case, in arrival order per case, and makes the reader wait when it is full
so that an unbounded backlog never builds up in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class CaseOrderedRunner:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._slots = asyncio.Semaphore(limit)
        self._last: dict[str, asyncio.Future[None]] = {}  # per case: the latest job's completion
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, case: str, job: Callable[[], Awaitable[None]]) -> None:
        """Start `job` after every earlier job of `case`; waits first while all slots are busy."""
        await self._slots.acquire()
        previous = self._last.get(case)
        finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last[case] = finished

        async def in_turn() -> None:
            try:
                if previous is not None:
                    await previous
                await job()
            finally:
                finished.set_result(None)
                if self._last.get(case) is finished:
                    del self._last[case]
                self._slots.release()

        task = asyncio.create_task(in_turn())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for every started job (jobs handle their own errors)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()

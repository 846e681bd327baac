"""Store-and-forward delivery to subscribed platforms.

Deliveries live in the store; this module only wakes subscribers when there may be work (a new
message for their platform, an ack that unblocks the next message of a case) and leases batches
for them. Polling every `poll_interval` catches expired leases and anything a wake-up missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from gateway.core.settings import setting
from gateway.store import ClaimedDelivery, Store


@dataclass(frozen=True)
class DeliveryConfig:
    visibility_timeout: float = setting(
        30.0, "An unacknowledged delivery is delivered again after this.", key="visibility_timeout_seconds",
        unit="seconds", minimum=0.01)
    max_attempts: int = setting(10, "Unacknowledged attempts before a delivery goes to the dead-letter state.",
                                minimum=1)
    batch: int = 64                   # deliveries leased per store call
    poll_interval: float = 1.0        # seconds between store polls when nothing wakes a subscriber


class Router:
    def __init__(self, store: Store, config: DeliveryConfig, clock: Callable[[], dt.datetime]) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._closed = asyncio.Event()

    def notify(self, platform: str) -> None:
        """There may be new deliveries for `platform`."""
        for event in self._waiters.get(platform, ()):
            event.set()

    def close(self) -> None:
        """End every subscription stream (the gateway is draining)."""
        self._closed.set()
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def deliveries(self, platform: str, agencies: frozenset[str] | None) -> AsyncIterator[ClaimedDelivery]:
        """Lease and yield deliveries for `platform` until the router closes."""
        wake = asyncio.Event()
        self._waiters[platform].add(wake)
        try:
            while not self._closed.is_set():
                wake.clear()  # before claiming, so a notify during the claim is not lost
                batch = await self._store.claim_deliveries(
                    platform, agencies, limit=self._config.batch,
                    lease=dt.timedelta(seconds=self._config.visibility_timeout),
                    max_attempts=self._config.max_attempts, now=self._clock(),
                )
                for delivery in batch:
                    yield delivery
                if len(batch) < self._config.batch:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), self._config.poll_interval)
        finally:
            self._waiters[platform].discard(wake)

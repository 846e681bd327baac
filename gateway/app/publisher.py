"""Publishing the transparency log's checkpoints: at a set interval, and on demand.

Every `[log] checkpoint_interval_seconds` the publisher has the store hash the leaves logged since
the last time into the stored tree and, if the tree grew, sign a checkpoint (`Store.publish_checkpoint`:
replicas take turns on one row, so one of them signs each tree size). `publish_now` does the same
at once, for a caller waiting on it (an inclusion proof for a message no checkpoint covers yet);
callers arriving while a publication runs share it.

Checkpoints are signed by the key that signs receipts at that moment (`gateway.core.checkpoints`,
`GatewaySigner.at`), so a rotation of the gateway's signing key or suite changes them alike.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

from gateway.core.errors import GatewayError, StoreUnavailable
from gateway.core.settings import setting
from gateway.service.metrics import Metrics
from gateway.store import CheckpointRecord, SignCheckpoint, Store

log = logging.getLogger("gateway.app.publisher")


@dataclass(frozen=True)
class LogConfig:
    """The transparency log's checkpoints."""

    checkpoint_interval: float = setting(
        10.0, "Time between checkpoints of the transparency log (one is signed only if the log grew; an"
        " inclusion proof asked for a newer message publishes one at once).", key="checkpoint_interval_seconds",
        unit="seconds", minimum=0.05, maximum=3600)


class CheckpointPublisher:
    """Extends the stored tree and signs its checkpoints; see the module docstring."""

    def __init__(self, *, store: Store, sign: SignCheckpoint, metrics: Metrics,
                 clock: Callable[[], dt.datetime]) -> None:
        self._store = store
        self._sign = sign
        self._metrics = metrics
        self._clock = clock
        self._running: asyncio.Task[CheckpointRecord | None] | None = None
        self._closed = False

    async def publish_now(self) -> CheckpointRecord | None:
        """Publish a checkpoint of everything logged so far (None if there was nothing new).

        The publication is shielded from its callers: one that goes away (a call cancelled, the
        periodic round stopped) leaves it to finish for the others, and `close` waits for it.

        Raises StoreUnavailable, also once the publisher is closed.
        """
        if self._closed:
            raise StoreUnavailable("the gateway is stopping: no checkpoint is published", reason="STORE_UNAVAILABLE")
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._publish())
            # Shielded, it outlives a caller that is cancelled (the loop at shutdown): its outcome
            # is then nobody's, and must not surface as "Task exception was never retrieved".
            self._running.add_done_callback(_outcome_seen)
        return await asyncio.shield(self._running)

    async def close(self) -> None:
        """Publish nothing more, and wait for a publication under way: before the store closes, so
        that none outlives it (a shielded publication whose callers all went away would otherwise
        run on against a closed store and fail unseen)."""
        self._closed = True
        running, self._running = self._running, None
        if running is None:
            return
        try:
            await running
        except Exception as err:  # its callers are gone: say what became of it here
            reason = err.reason if isinstance(err, GatewayError) else type(err).__name__
            log.warning("checkpoint not published", extra={"fields": {"reason": reason}})

    async def _publish(self) -> CheckpointRecord | None:
        published = await self._store.publish_checkpoint(self._sign)
        latest = published or await self._store.latest_checkpoint()
        if latest is not None:
            self._metrics.log_checkpoint(latest.tree_size, latest.published_at)
        if published is not None:
            log.debug("checkpoint", extra={"fields": {"tree_size": published.tree_size}})
        return published

    async def run(self, interval: float) -> None:
        """Publish every `interval` seconds until cancelled; a failed round is logged and retried
        at the next one."""
        while True:
            try:
                await self.publish_now()
            except GatewayError as err:
                log.warning("checkpoint not published", extra={"fields": {"reason": err.reason}})
            except Exception as err:  # a defect or an altered store: say so, and keep the loop alive
                log.exception("checkpoint not published", extra={"fields": {"reason": type(err).__name__}})
            await asyncio.sleep(interval)


def _outcome_seen(task: asyncio.Task[CheckpointRecord | None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: whoever awaited it has it already, or nobody wants it

"""The checkpoint publisher: concurrent callers share one publication, and a failed round is
logged and retried at the next interval instead of ending the loop."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.app.publisher import CheckpointPublisher
from gateway.core.errors import StoreUnavailable
from gateway.service.metrics import Metrics
from gateway.store import CheckpointRecord

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


class _Store:
    """Just what the publisher calls; each publication signs a tree one leaf larger."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0
        self.latest: CheckpointRecord | None = None

    async def publish_checkpoint(self, sign: Any) -> CheckpointRecord | None:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.failures:
            raise self.failures.pop(0)
        size = (self.latest.tree_size if self.latest else 0) + 1
        self.latest = CheckpointRecord(size, bytes(32), sign(size, bytes(32)), T0)
        return self.latest

    async def latest_checkpoint(self) -> CheckpointRecord | None:
        return self.latest


def _publisher(store: _Store, metrics: Metrics) -> CheckpointPublisher:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from gateway.core.checkpoints import checkpoint_signer
    from gateway.core.signing import LocalSigner
    from mitransfer.protocol import suites

    signer = LocalSigner(suites.signing_key("gw", ed25519.Ed25519PrivateKey.generate()))
    sign = checkpoint_signer("test/log", lambda: signer, {"gw": signer.verifying_key()})
    return CheckpointPublisher(store=store, sign=sign, metrics=metrics,  # type: ignore[arg-type]
                               clock=lambda: T0)


async def test_callers_at_once_share_one_publication() -> None:
    store = _Store([])
    publisher = _publisher(store, Metrics(CollectorRegistry()))
    results = await asyncio.gather(*(publisher.publish_now() for _ in range(5)))
    assert store.calls == 1 and len({id(r) for r in results}) == 1


async def test_a_failed_round_does_not_end_the_loop() -> None:
    registry = CollectorRegistry()
    store = _Store([StoreUnavailable("down", reason="STORE_UNAVAILABLE"), RuntimeError("a defect")])
    publisher = _publisher(store, Metrics(registry))
    task = asyncio.create_task(publisher.run(0.01))
    for _ in range(200):
        if store.latest is not None:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert store.latest is not None and store.calls == 3
    assert registry.get_sample_value("transfer_gateway_log_checkpoint_tree_size") == 1

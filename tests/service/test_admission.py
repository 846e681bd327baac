"""Admission on its own: the fair gate's turns and cancellations, and each caller's limits, with
callers named by certificate as grpc.aio names them."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from gateway.app.devpki import DevPaths
from gateway.core.errors import QuotaExceeded
from gateway.core.quota import Quota
from gateway.core.registry import LiveRegistry, Registry
from gateway.service.admission import RATE_PATIENCE, UNREGISTERED, Admission, FairGate
from gateway.service.metrics import Metrics
from mitransfer.protocol.registry import PlatformLimits


class Peer:
    """The part of a grpc.aio ServicerContext admission reads: the certificate's SANs."""

    def __init__(self, *sans: str) -> None:
        self._sans = [s.encode() for s in sans]

    def peer_identity_key(self) -> str | None:
        return "x509_subject_alternative_name" if self._sans else None

    def peer_identities(self) -> list[bytes]:
        return self._sans


async def test_waiting_callers_take_turns_whatever_their_number() -> None:
    gate = FairGate(2)
    await gate.enter("a")
    await gate.enter("a")
    served: list[str] = []

    async def wait(key: str) -> None:
        await gate.enter(key)
        served.append(key)

    tasks = [asyncio.create_task(wait(key)) for key in ("a", "a", "a", "b", "c", "a", "b")]
    await asyncio.sleep(0)
    assert (gate.waiting("a"), gate.waiting("b"), gate.waiting("c")) == (4, 2, 1)
    for _ in tasks:
        gate.leave()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    # First come first served would give a a a b c a b: the turns give one each, in the order queued.
    assert served == ["a", "b", "c", "a", "b", "a", "a"]
    assert gate.active == 2


async def test_a_waiter_cancelled_leaves_its_place_and_one_cancelled_when_served_passes_it_on() -> None:
    gate = FairGate(1)
    await gate.enter("a")
    early = asyncio.create_task(gate.enter("b"))
    late = asyncio.create_task(gate.enter("c"))
    last = asyncio.create_task(gate.enter("d"))
    await asyncio.sleep(0)
    early.cancel()  # cancelled while waiting: leaves the queue
    await asyncio.sleep(0)
    assert gate.waiting("b") == 0
    gate.leave()  # to c ...
    late.cancel()  # ... cancelled before it ran: c passes the place to d
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert last.done() and late.cancelled() and early.cancelled()
    assert gate.active == 1
    gate.leave()
    assert gate.active == 0


def admission(pki: DevPaths, quota: Quota, now: list[float]) -> tuple[Admission, CollectorRegistry]:
    prometheus = CollectorRegistry()
    live = LiveRegistry(Registry.load(pki.registry))
    return Admission(live, quota, Metrics(prometheus), clock=lambda: now[0]), prometheus


async def test_calls_over_the_rate_by_more_than_a_second_are_refused_with_the_wait(pki: DevPaths) -> None:
    now = [0.0]
    gate, prometheus = admission(pki, Quota(requests_per_second=0.5, burst=2), now)
    jiangsu, zhejiang = Peer("urn:mitransfer:platform:jiangsu"), Peer("urn:mitransfer:platform:zhejiang")
    for _ in range(2):
        async with gate.call(jiangsu):
            pass
    with pytest.raises(QuotaExceeded) as refused:  # its next token in 2 s: more than RATE_PATIENCE
        gate.call(jiangsu)
    err = refused.value
    assert (err.reason, err.subject, err.limit) == ("RATE_EXCEEDED", "platform:jiangsu", "requests_per_second")
    assert err.retry_after == pytest.approx(2.0) and err.retry_after > RATE_PATIENCE
    assert err.metadata == {"limit": "requests_per_second", "allowed": "0.5"}
    async with gate.call(zhejiang):  # its own bucket
        pass
    now[0] += 2.0
    async with gate.call(jiangsu):
        pass
    sample = prometheus.get_sample_value("transfer_gateway_throttled_total",
                                         {"caller": "jiangsu", "limit": "requests_per_second"})
    assert sample == 1


async def test_calls_over_the_rate_by_less_than_a_second_wait_for_their_token(pki: DevPaths) -> None:
    """Paced, not refused: a caller keeping its calls busy gets its rate, and costs nothing while
    it waits (each waits for its own token, reserved in turn)."""
    loop = asyncio.get_running_loop()
    prometheus = CollectorRegistry()
    gate = Admission(LiveRegistry(Registry.load(pki.registry)), Quota(requests_per_second=20.0, burst=1),
                     Metrics(prometheus), clock=loop.time)
    jiangsu = Peer("urn:mitransfer:platform:jiangsu")
    started = loop.time()
    done: list[float] = []

    async def call() -> None:
        async with gate.call(jiangsu):
            done.append(loop.time() - started)

    await asyncio.gather(*(call() for _ in range(5)))
    assert len(done) == 5 and done[-1] >= 4 / 20 - 0.01  # the fifth used the fourth token after the burst's
    assert prometheus.get_sample_value("transfer_gateway_throttled_total",
                                       {"caller": "jiangsu", "limit": "requests_per_second"}) is None


async def test_calls_in_flight_beyond_the_limit_are_refused_those_waiting_included(pki: DevPaths) -> None:
    gate, _ = admission(pki, Quota(calls_in_flight=3, active_calls=1), [0.0])
    jiangsu = Peer("urn:mitransfer:platform:jiangsu")
    release = asyncio.Event()

    async def call() -> None:
        async with gate.call(jiangsu):
            await release.wait()

    running = [asyncio.create_task(call()) for _ in range(3)]  # one at work, two waiting for their turn
    await asyncio.sleep(0)
    with pytest.raises(QuotaExceeded) as refused:
        gate.call(jiangsu)
    assert refused.value.reason == "CALLS_IN_FLIGHT_EXCEEDED" and refused.value.retry_after > 0
    other = asyncio.create_task(call_as(gate, Peer("urn:mitransfer:platform:anhui")))  # its own limit: admitted
    await asyncio.sleep(0)
    assert gate.places.waiting("platform:anhui") == 1
    release.set()
    await asyncio.gather(*running, other)
    async with gate.call(jiangsu):  # all done: room again
        pass


async def call_as(gate: Admission, peer: Peer) -> None:
    async with gate.call(peer):
        pass


def test_a_registry_limit_applies_to_its_platform_alone(pki: DevPaths) -> None:
    registry = Registry.load(pki.registry)
    limited = registry.platforms["zhejiang"]
    platforms = dict(registry.platforms)
    platforms["zhejiang"] = replace(limited, limits=PlatformLimits(subscriptions=1))
    live = LiveRegistry(replace(registry, platforms=platforms))
    gate = Admission(live, Quota(subscriptions=5), Metrics(CollectorRegistry()))
    zhejiang, jiangsu = Peer("urn:mitransfer:platform:zhejiang"), Peer("urn:mitransfer:platform:jiangsu")
    with gate.subscription(zhejiang):
        with pytest.raises(QuotaExceeded) as refused:
            gate.subscription(zhejiang)
        assert refused.value.reason == "SUBSCRIPTIONS_EXCEEDED"
        with gate.subscription(jiangsu), gate.subscription(jiangsu):
            pass
    with gate.subscription(zhejiang):  # closed: room again
        pass


def test_a_reloaded_registrys_limits_apply_at_once_to_what_is_already_open(pki: DevPaths) -> None:
    registry = Registry.load(pki.registry)
    live = LiveRegistry(registry)
    gate = Admission(live, Quota(subscriptions=3, requests_per_second=1e6, burst=10**6), Metrics(CollectorRegistry()))
    zhejiang = Peer("urn:mitransfer:platform:zhejiang")
    with gate.subscription(zhejiang), gate.subscription(zhejiang):
        platforms = dict(registry.platforms)
        platforms["zhejiang"] = replace(platforms["zhejiang"], limits=PlatformLimits(
            subscriptions=2, requests_per_second=0.001, burst=1))
        assert live.replace(replace(registry, version=registry.version + 1, platforms=platforms))
        with pytest.raises(QuotaExceeded) as refused:  # the two open count against the new limit of two
            gate.subscription(zhejiang)
        assert refused.value.reason == "SUBSCRIPTIONS_EXCEEDED" and refused.value.metadata["allowed"] == "2"
    # Room now, and its new burst of one; then its new rate, one in 1,000 s.
    with gate.subscription(zhejiang), pytest.raises(QuotaExceeded) as over:
        gate.subscription(zhejiang)
    assert over.value.reason == "RATE_EXCEEDED"


def test_callers_without_a_registered_certificate_share_one_share(pki: DevPaths) -> None:
    gate = Admission(LiveRegistry(Registry.load(pki.registry)), Quota(), Metrics(CollectorRegistry()))
    strangers = [gate.caller(Peer("urn:nobody:1")), gate.caller(Peer("urn:nobody:2")), gate.caller(Peer())]
    assert {id(c) for c in strangers} == {id(strangers[0])} and strangers[0].label == UNREGISTERED
    reviewer = gate.caller(Peer("urn:mitransfer:operator:reviewer"))
    assert reviewer.subject == "operator:reviewer"

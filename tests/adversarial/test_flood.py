"""Floods: one platform sending as much as it can, or more than it may, must not take another
platform's share of the gateway. Fairness is asserted by counts and order (how many of the
flood's calls complete while the other platform's one call waits), never by time.

Every loop is bounded in count; every call carries a deadline.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from clients.builders import EMPLOYEE
from clients.platform import PlatformClient, PlatformConfig
from clients.retry import RetryPolicy
from clients.scenario import CasePlan, outbound_messages
from gateway.app.assembly import assemble
from gateway.app.config import GatewayConfig
from gateway.app.devpki import DevPaths
from gateway.core.quota import Quota
from mitransfer.v1 import envelope_pb2, exchange_pb2
from tests.adversarial.conftest import rss_mib
from tests.conftest import test_config as base_config
from tests.support import GatewayHandle, failure, sign, signer

DEADLINE = 20.0  # seconds any one call of this module may take before it counts as a hang
UNLIMITED_RATE = Quota(requests_per_second=1e9, burst=10**9)


@asynccontextmanager
async def running(config: GatewayConfig, pki: DevPaths, database: Path) -> AsyncIterator[GatewayHandle]:
    server = assemble(config)
    await server.start()
    handle = GatewayHandle(server=server, pki=pki, database=database)
    try:
        yield handle
    finally:
        await handle.close_channels()
        await server.stop(grace=0.1)


def notices(pki: DevPaths, platform: str, outbound: str, inbound: str, count: int, first_seed: int) -> list[bytes]:
    """`count` valid outbound notices, each opening a case of its own, signed by `platform`."""
    key = signer(pki, platform)
    return [sign(outbound_messages(CasePlan.synthetic(outbound, inbound, insurance_type=EMPLOYEE, balance_fen=100,
                                                      seed=first_seed + i))[0], key).SerializeToString()
            for i in range(count)]


async def test_one_platform_flooding_at_64_in_flight_leaves_anothers_calls_served_in_turn(
        pki: DevPaths, tmp_path: Path) -> None:
    """Jiangsu keeps 64 valid submissions in flight; Zhejiang submits one at a time meanwhile.
    Served first come first served, each of Zhejiang's calls would wait for the ~64 of Jiangsu's
    ahead of it; served in turns, for about as many as the gateway works on at once."""
    quota = replace(UNLIMITED_RATE, calls_in_flight=64, active_calls=4)
    config = replace(base_config(pki, tmp_path / "gateway.db"), quota=quota)
    flood = notices(pki, "jiangsu", "320100", "330100", 1500, first_seed=1)
    victim = notices(pki, "zhejiang", "330100", "320100", 24, first_seed=100_000)
    async with running(config, pki, tmp_path / "gateway.db") as gateway:
        a = gateway.channel("jiangsu").unary_unary("/mitransfer.v1.Exchange/Submit")
        b = gateway.channel("zhejiang").unary_unary("/mitransfer.v1.Exchange/Submit")
        pending = iter(flood)
        completed = 0
        stopping = False

        async def flooder() -> None:
            nonlocal completed
            while not stopping and (request := next(pending, None)) is not None:
                await a(request, timeout=DEADLINE)
                completed += 1

        workers = [asyncio.create_task(flooder()) for _ in range(64)]
        for _ in range(1000):  # until the flood is under way (bounded)
            if completed >= 64:
                break
            await asyncio.sleep(0.01)
        overtaken = []  # how many of the flood's calls completed while each of Zhejiang's was in flight
        for request in victim:
            before = completed
            await b(request, timeout=DEADLINE)
            overtaken.append(completed - before)
        left = len(flood) - completed
        stopping = True
        await asyncio.gather(*workers)

    assert left > 64, "the flood ran out before Zhejiang's calls were done: it measured nothing"
    assert max(overtaken) < 64 and statistics.median(overtaken) <= 3 * quota.active_calls, overtaken


async def test_250_concurrent_maximum_size_bad_signatures_are_refused_beyond_the_calls_in_flight(
        pki: DevPaths, tmp_path: Path) -> None:
    """The gateway is kept busy (its places held), so all 250 arrive while none can finish: the
    first 64 wait their turn, the other 186 are refused at once with when to come back, and the
    memory they hold is released with them."""
    config = replace(base_config(pki, tmp_path / "gateway.db"), quota=replace(UNLIMITED_RATE, calls_in_flight=64))
    room = config.messages.max_message_bytes - 100  # the envelope's other fields and lengths
    bad = envelope_pb2.SignedMessage(kind=envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE, payload=b"\x0a" * room,
                                     key_id="jiangsu-dev-1", signature=b"\x00" * 64).SerializeToString()
    assert config.messages.max_message_bytes - 100 < len(bad) <= config.messages.max_message_bytes
    async with running(config, pki, tmp_path / "gateway.db") as gateway:
        admission = gateway.server.admission
        for _ in range(config.quota.active_calls):  # hold every place: nothing is worked on meanwhile
            await admission.places.enter("test")
        channels = [gateway.channel("jiangsu").unary_unary("/mitransfer.v1.Exchange/Submit") for _ in range(4)]
        before = rss_mib()
        calls = [asyncio.ensure_future(channels[i % 4](bad, timeout=DEADLINE)) for i in range(250)]
        for _ in range(2000):  # until every call has arrived: waiting or refused (bounded)
            if admission.places.waiting("platform:jiangsu") + sum(c.done() for c in calls) >= 250:
                break
            await asyncio.sleep(0.01)
        assert admission.places.waiting("platform:jiangsu") == 64
        for _ in range(config.quota.active_calls):
            admission.places.leave()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        grown = rss_mib() - before  # this process: the gateway and its 250 callers together
        exhausted = gateway.server.prometheus.get_sample_value(
            "transfer_gateway_throttled_total", {"caller": "jiangsu", "limit": "calls_in_flight"})

    codes = [o.code() for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(codes) == 250
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 186 == exhausted
    assert codes.count(grpc.StatusCode.UNAUTHENTICATED) == 64
    refusal = next(o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)
                   and o.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert failure(refusal).reason == "CALLS_IN_FLIGHT_EXCEEDED"
    retry, quota_failure = details(refusal)
    assert 0 < retry.retry_delay.ToNanoseconds() <= 10**9
    assert [(v.subject, v.description) for v in quota_failure.violations] == [("platform:jiangsu", "calls_in_flight")]
    assert grown < 64, f"{grown:.0f} MiB more for 250 calls of {len(bad):,} bytes"


def details(err: grpc.aio.AioRpcError) -> tuple[error_details_pb2.RetryInfo, error_details_pb2.QuotaFailure]:
    status = rpc_status.from_call(err)
    assert status is not None
    retry, quota = error_details_pb2.RetryInfo(), error_details_pb2.QuotaFailure()
    found = {detail.type_url.rpartition("/")[2] for detail in status.details}
    assert {"google.rpc.RetryInfo", "google.rpc.QuotaFailure"} <= found
    for detail in status.details:
        if detail.Is(retry.DESCRIPTOR):
            detail.Unpack(retry)
        elif detail.Is(quota.DESCRIPTOR):
            detail.Unpack(quota)
    return retry, quota


async def test_a_platform_over_its_rate_is_paced_then_told_when_to_come_back_and_the_others_are_not(
        pki: DevPaths, tmp_path: Path) -> None:
    """Rate 2/s, burst 3, six calls at once: three answered at once, a fourth and a fifth wait half
    a second and a second for their tokens (paced), the sixth's would come 1.5 s away, more than
    the gateway waits: refused, with when."""
    config = replace(base_config(pki, tmp_path / "gateway.db"), quota=Quota(requests_per_second=2.0, burst=3))
    async with running(config, pki, tmp_path / "gateway.db") as gateway:
        jiangsu, zhejiang = gateway.exchange("jiangsu"), gateway.exchange("zhejiang")
        unknown = exchange_pb2.AckDeliveryRequest(message_id="00000000-0000-4000-8000-000000000000")
        outcomes = await asyncio.gather(*(jiangsu.AckDelivery(unknown, timeout=DEADLINE) for _ in range(6)),
                                        return_exceptions=True)
        codes = sorted(o.code().name for o in outcomes if isinstance(o, grpc.aio.AioRpcError))
        assert codes == ["NOT_FOUND"] * 5 + ["RESOURCE_EXHAUSTED"]
        last = next(o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)
                    and o.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert failure(last).reason == "RATE_EXCEEDED"
        assert failure(last).metadata == {"limit": "requests_per_second", "allowed": "2"}
        retry, quota = details(last)
        assert 1.0 < retry.retry_delay.ToNanoseconds() / 1e9 <= 1.5  # more than the gateway waits for a token
        assert quota.violations[0].subject == "platform:jiangsu"
        with pytest.raises(grpc.aio.AioRpcError) as other:  # Zhejiang's bucket is its own
            await zhejiang.AckDelivery(unknown, timeout=DEADLINE)
        assert other.value.code() == grpc.StatusCode.NOT_FOUND


async def test_the_reference_client_waits_as_told_and_each_call_is_refused_at_most_once(
        pki: DevPaths, tmp_path: Path) -> None:
    """Waiting what RetryInfo says is enough to be admitted: a client that honours it is refused
    at most once per call, where one retrying after its own short backoff would be refused over
    and over until the token came."""
    config = replace(base_config(pki, tmp_path / "gateway.db"), quota=Quota(requests_per_second=0.8, burst=1))
    async with running(config, pki, tmp_path / "gateway.db") as gateway:
        eager = RetryPolicy(initial_backoff=0.001, max_backoff=0.002, deadline=DEADLINE)
        platform = replace(PlatformConfig.dev("jiangsu", f"127.0.0.1:{gateway.server.port}", pki.root), retry=eager)
        async with PlatformClient.connect(platform) as client:
            for request in notices(pki, "jiangsu", "320100", "330100", 2, first_seed=7):
                await client.submit_signed(envelope_pb2.SignedMessage.FromString(request))
        refused = gateway.server.prometheus.get_sample_value(
            "transfer_gateway_throttled_total", {"caller": "jiangsu", "limit": "requests_per_second"}) or 0
    assert refused == 1  # the second call, once: its token 1.25 s away, then waited for


async def test_subscriptions_beyond_the_limit_are_refused_until_one_closes(pki: DevPaths, tmp_path: Path) -> None:
    config = replace(base_config(pki, tmp_path / "gateway.db"), quota=Quota(subscriptions=2))
    async with running(config, pki, tmp_path / "gateway.db") as gateway:
        zhejiang = gateway.exchange("zhejiang")
        first, second = (zhejiang.Subscribe(exchange_pb2.SubscribeRequest()) for _ in range(2))
        for call in (first, second):  # open: both wait for deliveries
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(call.read()), 0.2)
        third = zhejiang.Subscribe(exchange_pb2.SubscribeRequest())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(third.read(), DEADLINE)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert failure(refused.value).reason == "SUBSCRIPTIONS_EXCEEDED"
        other = gateway.exchange("jiangsu").Subscribe(exchange_pb2.SubscribeRequest())  # Jiangsu's are its own
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(other.read()), 0.2)
        first.cancel()
        for _ in range(500):  # until the gateway has seen it close (bounded)
            if gateway.server.prometheus.get_sample_value("transfer_gateway_subscriptions",
                                                          {"caller": "zhejiang"}) == 1:
                break
            await asyncio.sleep(0.01)
        fourth = zhejiang.Subscribe(exchange_pb2.SubscribeRequest())
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(fourth.read()), 0.2)
        for call in (second, other, fourth):
            call.cancel()


@pytest.mark.parametrize("limit", ["calls_in_flight", "requests_per_second", "burst", "subscriptions"])
def test_every_limit_is_a_setting_and_a_registry_key(limit: str) -> None:
    from mitransfer.protocol.registry import PlatformLimits

    assert limit in Quota.__dataclass_fields__ and limit in PlatformLimits.__dataclass_fields__

"""The reference client against a real gateway over mutual TLS on loopback (the `gateway`
fixture of conftest): whole cases both ways, replays, rich errors, redelivery suppression."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import grpc
import pytest

from clients import builders
from clients.deliveries import VerifiedDelivery
from clients.errors import GatewayRejected
from clients.platform import PlatformClient, PlatformConfig
from clients.reviewer import OperatorConfig, ReviewerClient
from clients.scenario import CasePlan, outbound_messages, run_cases, send_case
from mitransfer.v1 import tracking_pb2
from tests.support import GatewayHandle

JIANGSU, ZHEJIANG = ("320100", "320500", "329900"), ("330100", "330200", "339900")


@pytest.fixture
async def clients(gateway: GatewayHandle) -> AsyncIterator[tuple[PlatformClient, PlatformClient]]:
    address = f"127.0.0.1:{gateway.server.port}"
    async with AsyncExitStack() as stack:
        js, zj = [
            await stack.enter_async_context(PlatformClient.connect(PlatformConfig.dev(p, address, gateway.pki.root)))
            for p in ("jiangsu", "zhejiang")
        ]
        yield js, zj


async def test_cases_complete_both_ways(
    gateway: GatewayHandle, clients: tuple[PlatformClient, PlatformClient]
) -> None:
    """Twenty cases, two of them above the review threshold: a reviewer approves those."""
    js, zj = clients
    progress: list[int] = []
    config = OperatorConfig.dev("reviewer", f"127.0.0.1:{gateway.server.port}", gateway.pki.root)
    async with ReviewerClient.connect(config) as reviewer:
        result = await run_cases(js, zj, transfers=20, a_agencies=JIANGSU, b_agencies=ZHEJIANG, reviewer=reviewer,
                                 on_progress=lambda done, total: progress.append(done), timeout=60)
    assert (result.completed, result.failed) == (20, 0), result.errors
    assert progress[-1] == 20
    approved = gateway.server.prometheus.get_sample_value("transfer_gateway_reviews_total", {"decision": "approved"})
    assert approved is not None and approved >= 1


async def test_replay_returns_the_original_receipt_and_other_bytes_conflict(
    clients: tuple[PlatformClient, PlatformClient],
) -> None:
    js, _ = clients
    plan = CasePlan.synthetic(JIANGSU[0], ZHEJIANG[0], balance_fen=500, seed=11)
    notice = outbound_messages(plan)[0]
    signed = js.sign(notice)
    first, again = await js.submit_signed(signed), await js.submit_signed(signed)
    assert first.receipt == again.receipt
    notice.person.name = "测试人员9999"  # same message id, other bytes
    with pytest.raises(GatewayRejected) as err:
        await js.submit(notice)
    assert err.value.code == grpc.StatusCode.ALREADY_EXISTS and err.value.reason


async def test_refusal_names_the_rule_and_get_case_shows_the_state(
    clients: tuple[PlatformClient, PlatformClient],
) -> None:
    js, _ = clients
    plan = CasePlan.synthetic(JIANGSU[1], ZHEJIANG[1], insurance_type=builders.RESIDENT, seed=12)
    await send_case(js, plan)
    funds = builders.fund_transfer(plan.route, 100, builders.fund_account(JIANGSU[1], receiving=False),
                                   builders.fund_account(ZHEJIANG[1], receiving=True), "R1", builders.today_in_china())
    with pytest.raises(GatewayRejected) as err:
        await js.submit(funds)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and err.value.reason
    case = await js.get_case(plan.route.transfer_id)
    assert case.state == tracking_pb2.CASE_STATE_TABLE_SENT and len(case.messages) == 2


async def test_slow_handler_sees_each_message_once(clients: tuple[PlatformClient, PlatformClient]) -> None:
    """The test gateway redelivers after 0.5 s; a handler slower than that still runs once per
    message, and every delivery ends acknowledged."""
    js, zj = clients
    plan = CasePlan.synthetic(JIANGSU[2], ZHEJIANG[2], insurance_type=builders.RESIDENT, seed=13)
    await send_case(js, plan)
    seen: list[str] = []
    stop = asyncio.Event()

    async def slow(delivery: VerifiedDelivery) -> None:
        seen.append(delivery.message_id)
        await asyncio.sleep(0.8)
        if len(seen) == 2:
            stop.set()

    await asyncio.wait_for(zj.subscribe(slow, stop=stop), timeout=20)
    assert len(seen) == len(set(seen)) == 2
    case = await js.get_case(plan.route.transfer_id)
    assert all(m.delivery_state == tracking_pb2.DELIVERY_STATE_ACKNOWLEDGED for m in case.messages)
    assert any(m.delivery_attempts > 1 for m in case.messages)  # redeliveries did come, and were dropped

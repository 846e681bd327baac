"""Tracking over real mTLS: stages with deadlines on the working-day calendar, ListCases with its
filters, pages and visibility, and the SLA gauges the monitor keeps current between messages."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import builders
from clients.errors import GatewayRejected
from clients.platform import PlatformClient, PlatformConfig
from clients.reviewer import OperatorConfig, ReviewerClient
from clients.scenario import CasePlan, run_cases, send_case
from gateway.app.assembly import assemble
from gateway.app.config import SlaConfig
from gateway.app.devpki import DevPaths
from gateway.app.server import CALENDAR_HEALTH, GatewayServer
from gateway.core.limits import MessageLimits
from mitransfer.v1 import tracking_pb2, tracking_pb2_grpc
from tests.conftest import test_config as gateway_config
from tests.support import failure, operator_channel, secure_channel

S = tracking_pb2


class ShiftedClock:
    """Real time plus an offset the test moves forward (the gateway's only clock)."""

    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset


@dataclass
class Setup:
    server: GatewayServer
    clock: ShiftedClock
    jiangsu: PlatformClient
    anhui: PlatformClient
    operator: tracking_pb2_grpc.TrackingStub
    address: str
    pki: DevPaths

    def gauge(self, name: str, **labels: str) -> float:
        return self.server.prometheus.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def setup(pki: DevPaths, tmp_path: Path) -> AsyncIterator[Setup]:
    clock = ShiftedClock()
    # The gateway's clock moves weeks ahead of the platforms' here: their messages must stay fresh to it.
    lenient = MessageLimits(max_age=dt.timedelta(days=366))
    server = assemble(replace(gateway_config(pki, tmp_path / "g.db"), messages=lenient), clock=clock)
    await server.start()
    address = f"127.0.0.1:{server.port}"
    try:
        async with AsyncExitStack() as stack:
            js, ah = [await stack.enter_async_context(PlatformClient.connect(PlatformConfig.dev(p, address, pki.root)))
                      for p in ("jiangsu", "anhui")]
            channel = await stack.enter_async_context(operator_channel(pki, "operator", server.port))
            yield Setup(server, clock, js, ah, tracking_pb2_grpc.TrackingStub(channel), address, pki)
    finally:
        await server.stop(grace=0.5)


async def open_cases(client: PlatformClient, inbound: str, n: int, seed: int) -> list[str]:
    ids = []
    for i in range(n):
        plan = CasePlan.synthetic("320100", inbound, insurance_type=builders.RESIDENT, seed=seed + i)
        await send_case(client, plan)
        ids.append(plan.route.transfer_id)
    return ids


async def test_get_case_shows_each_stage_with_its_deadline(setup: Setup) -> None:
    [tid] = await open_cases(setup.jiangsu, "330100", 1, seed=1)
    case = await setup.jiangsu.get_case(tid)
    stages = {s.stage: s for s in case.stages}
    assert set(stages) == {S.STAGE_OUTBOUND, S.STAGE_TOTAL, S.STAGE_INBOUND}
    calendar = setup.server.sla.calendar
    table_accepted = case.messages[1].accepted_at.ToDatetime(dt.UTC)
    inbound = stages[S.STAGE_INBOUND]
    assert inbound.started_at.ToDatetime(dt.UTC) == table_accepted
    assert inbound.deadline.ToDatetime(dt.UTC) == calendar.deadline(table_accepted, 5)
    assert (inbound.working_days_limit, inbound.timeliness) == (5, S.TIMELINESS_ON_TIME)
    assert not inbound.HasField("finished_at")
    outbound = stages[S.STAGE_OUTBOUND]  # resident insurance: done once the table is sent
    assert outbound.finished_at.ToDatetime(dt.UTC) == table_accepted
    assert outbound.timeliness == S.TIMELINESS_ON_TIME and outbound.working_days_elapsed < 0.01
    assert stages[S.STAGE_TOTAL].working_days_limit == 15


async def test_overdue_cases_are_listed_and_counted_without_new_messages(setup: Setup) -> None:
    late = await open_cases(setup.jiangsu, "330100", 3, seed=10)
    setup.clock.offset = dt.timedelta(days=40)  # far past every limit, holidays or not
    await open_cases(setup.jiangsu, "330200", 1, seed=20)  # a fresh case: on time
    page = await setup.jiangsu.list_cases(tracking_pb2.ListCasesRequest(overdue=True))
    assert sorted(c.transfer_id for c in page.cases) == sorted(late)
    assert all(any(s.timeliness == S.TIMELINESS_OVERDUE for s in c.stages) for c in page.cases)
    assert not page.cases[0].messages  # lists carry no messages
    # Overdue on the inbound side's clock: listed for it, not for the outbound side.
    inbound_late = await setup.jiangsu.list_cases(tracking_pb2.ListCasesRequest(overdue=True,
                                                                                owner=S.STAGE_OWNER_INBOUND))
    assert sorted(c.transfer_id for c in inbound_late.cases) == sorted(late)
    assert not (await setup.jiangsu.list_cases(tracking_pb2.ListCasesRequest(
        overdue=True, owner=S.STAGE_OWNER_OUTBOUND))).cases
    await setup.server.monitor.refresh_once()
    pair = {"outbound_province": "32", "inbound_province": "33"}
    inbound = {"stage": "inbound", "owner": "inbound", "owner_province": "33", **pair}
    total = {"stage": "total", "owner": "both", "owner_province": "", **pair}
    assert setup.gauge("transfer_gateway_cases_overdue", **inbound) == 3
    assert setup.gauge("transfer_gateway_cases_overdue", **total) == 3
    assert setup.gauge("transfer_gateway_cases_open", **total) == 4
    assert setup.gauge("transfer_gateway_cases_due_soon", **inbound) == 0


async def test_due_soon_lists_cases_whose_last_day_is_near(setup: Setup) -> None:
    [tid] = await open_cases(setup.jiangsu, "330100", 1, seed=30)
    case = await setup.jiangsu.get_case(tid)
    inbound = next(s for s in case.stages if s.stage == S.STAGE_INBOUND)
    last = inbound.last_day
    # Move to 09:00 on the stage's last day (Shanghai): one working day or less is left.
    setup.clock.offset = dt.datetime(last.year, last.month, last.day, 1, tzinfo=dt.UTC) - dt.datetime.now(dt.UTC)
    page = await setup.jiangsu.list_cases(tracking_pb2.ListCasesRequest(due_soon=True))
    assert [c.transfer_id for c in page.cases] == [tid]
    assert {s.stage: s.timeliness for s in page.cases[0].stages}[S.STAGE_INBOUND] == S.TIMELINESS_DUE_SOON
    assert not (await setup.jiangsu.list_cases(tracking_pb2.ListCasesRequest(overdue=True))).cases


async def test_pages_filters_and_visibility(setup: Setup) -> None:
    to_zhejiang = await open_cases(setup.jiangsu, "330100", 3, seed=40)
    to_anhui = await open_cases(setup.jiangsu, "340100", 2, seed=50)
    seen, token = [], ""
    while True:
        page = await setup.jiangsu.list_cases(tracking_pb2.ListCasesRequest(page_size=2, page_token=token))
        assert len(page.cases) <= 2
        seen += [c.transfer_id for c in page.cases]
        token = page.next_page_token
        if not token:
            break
    assert seen == to_zhejiang + to_anhui  # oldest opened first, each exactly once
    by_province = await setup.jiangsu.list_cases(tracking_pb2.ListCasesRequest(inbound_province="34"))
    assert [c.transfer_id for c in by_province.cases] == to_anhui
    states = await setup.jiangsu.list_cases(tracking_pb2.ListCasesRequest(states=[S.CASE_STATE_COMPLETED]))
    assert not states.cases
    later = await setup.jiangsu.list_cases(tracking_pb2.ListCasesRequest(
        opened_from=(await setup.jiangsu.get_case(to_anhui[0])).opened_at))
    assert [c.transfer_id for c in later.cases] == to_anhui
    # Anhui is the inbound side of two cases and sees those only; an operator sees all.
    assert [c.transfer_id for c in (await setup.anhui.list_cases(tracking_pb2.ListCasesRequest())).cases] == to_anhui
    everything = await setup.operator.ListCases(tracking_pb2.ListCasesRequest(page_size=500))
    assert [c.transfer_id for c in everything.cases] == to_zhejiang + to_anhui
    assert (await setup.operator.GetCase(tracking_pb2.GetCaseRequest(transfer_id=to_zhejiang[0]))).stages
    with pytest.raises(GatewayRejected) as err:
        await setup.anhui.get_case(to_zhejiang[0])
    assert (err.value.code, err.value.reason) == (grpc.StatusCode.NOT_FOUND, "CASE_NOT_FOUND")


@pytest.mark.parametrize(("request_fields", "field"), [
    ({"outbound_province": "3"}, "outbound_province"),
    ({"page_size": 501}, "page_size"),
    ({"page_token": "not-a-token"}, "page_token"),
    ({"states": [99]}, "states"),
    ({"overdue": True, "due_soon": True}, "due_soon"),
    ({"opened_from": Timestamp(seconds=2**62)}, "opened_from"),
    ({"opened_before": Timestamp(seconds=-(2**40))}, "opened_before"),
    ({"opened_from": Timestamp(seconds=1, nanos=-1)}, "opened_from"),
    ({"states": [1] * len(tracking_pb2.CaseState.values())}, "states"),  # more states than there are
    ({"page_token": "A" * 10_000}, "page_token"),
    ({"page_token": base64.urlsafe_b64encode(b"2026-01-01T00:00:00+00:00 \x00").decode()}, "page_token"),
    ({"owner": S.STAGE_OWNER_INBOUND}, "owner"),  # an owner says whose overdue or due-soon stages
    ({"overdue": True, "owner": 9}, "owner"),
])
async def test_a_bad_query_names_the_field(setup: Setup, request_fields: dict[str, object], field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await setup.operator.ListCases(tracking_pb2.ListCasesRequest(**request_fields))  # type: ignore[arg-type]
    found = failure(err.value)
    assert (found.code, found.reason, found.fields) == (grpc.StatusCode.INVALID_ARGUMENT, "QUERY_INVALID", [field])


async def test_completed_cases_are_counted_on_time_with_their_durations(setup: Setup) -> None:
    async with AsyncExitStack() as stack:
        zj = await stack.enter_async_context(
            PlatformClient.connect(PlatformConfig.dev("zhejiang", setup.address, setup.pki.root)))
        reviewer = await stack.enter_async_context(
            ReviewerClient.connect(OperatorConfig.dev("reviewer", setup.address, setup.pki.root)))
        result = await run_cases(setup.jiangsu, zj, transfers=10, a_agencies=("320100",), b_agencies=("330100",),
                                 reviewer=reviewer, timeout=60)
    assert result.completed == 10, result.errors
    await setup.server.monitor.refresh_once()
    for pair in ({"outbound_province": "32", "inbound_province": "33"},
                 {"outbound_province": "33", "inbound_province": "32"}):
        total = {"stage": "total", "owner": "both", "owner_province": "", **pair}
        inbound = {"stage": "inbound", "owner": "inbound", "owner_province": pair["inbound_province"], **pair}
        assert setup.gauge("transfer_gateway_stages_finished", result="on_time", **total) == 5
        assert setup.gauge("transfer_gateway_stages_finished", result="late", **total) == 0
        assert setup.gauge("transfer_gateway_stage_duration_workdays_count", **inbound) == 5
    credited = sum(setup.gauge("transfer_gateway_funds_fen", status="credited", outbound_province=a,
                               inbound_province=b) for a, b in (("32", "33"), ("33", "32")))
    assert credited > 0
    assert setup.gauge("transfer_gateway_cases_open", stage="total", outbound_province="32",
                       inbound_province="33") == 0


async def track(setup: Setup, *args: str) -> str:
    """Run the reference CLI in its own process against the live gateway."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clients.track", "--platform", "jiangsu", "--gateway", setup.address,
        "--certs", str(setup.pki.root), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_the_track_cli_prints_a_timeline_and_a_list(setup: Setup) -> None:
    plan = CasePlan.synthetic("320100", "330100", insurance_type=builders.RESIDENT, seed=60)
    await send_case(setup.jiangsu, plan)
    timeline = await track(setup, plan.route.transfer_id)
    assert plan.route.transfer_id in timeline and "信息表已发送" in timeline
    assert "转入 inbound" in timeline and "information_table" in timeline and "outbound_notice" in timeline
    assert "opened by 转出地申请 an application at the outbound side" in timeline
    assert plan.person.name not in timeline and plan.person.certificate_number not in timeline
    setup.clock.offset = dt.timedelta(days=40)
    listing = await track(setup, "--list", "--overdue")
    assert plan.route.transfer_id in listing and "OVERDUE" in listing


class FixedClock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


async def calendar_health(pki: DevPaths, tmp_path: Path, calendar_file: Path | None) -> tuple[int, float]:
    """Start a gateway in late 2099 (a year no package knows); return the calendar's health and
    the fallback gauge for 2100."""
    config = gateway_config(pki, tmp_path / f"{calendar_file is not None}.db")
    config = replace(config, sla=SlaConfig(calendar_file=calendar_file))
    server = assemble(config, clock=FixedClock(dt.datetime(2099, 12, 20, 2, tzinfo=dt.UTC)))
    await server.start()
    try:
        async with secure_channel(pki, "jiangsu", server.port) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=CALENDAR_HEALTH), timeout=5)
            overall = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert overall.status == health_pb2.HealthCheckResponse.SERVING  # the gateway keeps serving
        return reply.status, server.prometheus.get_sample_value(
            "transfer_gateway_calendar_fallback", {"year": "2100"}) or 0.0
    finally:
        await server.stop(grace=0.5)


async def test_calendar_health_says_when_deadlines_fall_back(pki: DevPaths, tmp_path: Path) -> None:
    assert await calendar_health(pki, tmp_path, None) == (health_pb2.HealthCheckResponse.NOT_SERVING, 1.0)
    notice = tmp_path / "calendar.toml"
    notice.write_text('[2099]\nholidays = ["2099-12-31"]\n[2100]\nholidays = ["2100-01-01"]\n', encoding="utf-8")
    assert await calendar_health(pki, tmp_path, notice) == (health_pb2.HealthCheckResponse.SERVING, 0.0)

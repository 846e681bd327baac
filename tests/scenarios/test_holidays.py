"""The calendar that arrives late, over real mTLS with the reference client and the operator's
`transfer-gateway calendar load` command, on a gateway whose clock the test moves.

A case begun on 2026-12-24 (a Thursday) while 2027 has no official calendar: its outbound stage's
ten working days end on 2027-01-07, counting 2027-01-01 as a working day, and the deadline says it
is provisional. A 2027 notice making 2027-01-01 a holiday, loaded on 2027-01-05, moves the last
day to 2027-01-08: a table sent on that day is on time in Tracking and in the metrics. Loaded only
after the table came, it judges the finished stage again: late becomes on time, there too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import builders
from clients.platform import PlatformClient, PlatformConfig
from clients.scenario import CasePlan
from gateway.app.assembly import assemble
from gateway.app.devpki import DevPaths
from gateway.app.server import CALENDAR_HEALTH, GatewayServer
from gateway.core.workdays import CHINA
from mitransfer.v1 import tracking_pb2
from tests.conftest import test_config as gateway_config
from tests.support import secure_channel

ROOT = Path(__file__).resolve().parent.parent.parent
S = tracking_pb2
BEGUN = dt.datetime(2026, 12, 24, 15, 0, tzinfo=CHINA)
NOTICE_2027 = """[2027]
source = "国务院办公厅关于2027年部分节假日安排的通知（测试用）"
holidays = ["2027-01-01"]
workdays = []
"""


@dataclass
class Running:
    server: GatewayServer
    jiangsu: PlatformClient
    pki: DevPaths
    now: list[dt.datetime]  # the gateway's clock: the test moves it

    def at(self, moment: dt.datetime) -> None:
        self.now[0] = moment

    def gauge(self, name: str, **labels: str) -> float:
        return self.server.prometheus.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def running(pki: DevPaths, tmp_path: Path) -> AsyncIterator[Running]:
    now = [BEGUN]
    server = assemble(gateway_config(pki, tmp_path / "g.db"), clock=lambda: now[0])
    await server.start()
    try:
        async with PlatformClient.connect(PlatformConfig.dev("jiangsu", f"127.0.0.1:{server.port}", pki.root)) as js:
            yield Running(server, js, pki, now)
    finally:
        await server.stop(grace=0.5)


async def load_notice(running: Running, tmp_path: Path) -> str:
    """`transfer-gateway calendar load` in a process of its own, as an operator runs it."""
    notice = tmp_path / "notice-2027.toml"
    notice.write_text(NOTICE_2027, encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "calendar", "load", str(notice), "--gateway",
        f"127.0.0.1:{running.server.port}", "--certs", str(running.pki.root), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def begin_case(running: Running) -> CasePlan:
    """The outbound notice, on 2026-12-24 at 15:00: the case opens, its outbound stage begins."""
    plan = CasePlan.synthetic("320100", "330100", balance_fen=0, seed=2027, today=BEGUN.date())
    notice = builders.outbound_notice_accepted(plan.route, plan.person, plan.insurance_type, plan.suspension_date,
                                               created_at=BEGUN)
    await running.jiangsu.submit(notice)
    return plan


async def send_table(running: Running, plan: CasePlan, at: dt.datetime) -> None:
    running.at(at)
    table = builders.information_table(plan.route, plan.person, plan.insurance_type, plan.suspension_date,
                                       plan.periods, 0, created_at=at)
    await running.jiangsu.submit(table)


async def outbound_stage(running: Running, plan: CasePlan) -> tracking_pb2.StageProgress:
    case = await running.jiangsu.get_case(plan.route.transfer_id)
    return next(s for s in case.stages if s.stage == S.STAGE_OUTBOUND)


def last_day(stage: tracking_pb2.StageProgress) -> dt.date:
    return dt.date(stage.last_day.year, stage.last_day.month, stage.last_day.day)


async def calendar_health(running: Running) -> int:
    await running.server.monitor.refresh_once()
    async with secure_channel(running.pki, "jiangsu", running.server.port) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=CALENDAR_HEALTH))
    return int(reply.status)


PAIR = {"stage": "outbound", "owner": "outbound", "owner_province": "32", "outbound_province": "32",
        "inbound_province": "33"}


async def test_a_notice_loaded_in_time_moves_the_deadline_and_the_table_counts_on_time(
        running: Running, tmp_path: Path) -> None:
    plan = await begin_case(running)
    before = await outbound_stage(running, plan)
    assert (last_day(before), before.provisional, before.owner) == (dt.date(2027, 1, 7), True, S.STAGE_OWNER_OUTBOUND)
    assert before.deadline.ToDatetime(dt.UTC) == dt.datetime(2027, 1, 8, tzinfo=CHINA)
    assert await calendar_health(running) == health_pb2.HealthCheckResponse.NOT_SERVING  # 2027 within 60 days

    running.at(dt.datetime(2027, 1, 5, 10, tzinfo=CHINA))
    said = await load_notice(running, tmp_path)
    assert "loaded 2027 as calendar version 1" in said and "2 stage(s) counted again" in said  # outbound and total
    after = await outbound_stage(running, plan)
    assert (last_day(after), after.provisional) == (dt.date(2027, 1, 8), False)
    assert after.deadline.ToDatetime(dt.UTC) == dt.datetime(2027, 1, 9, tzinfo=CHINA)
    assert await calendar_health(running) == health_pb2.HealthCheckResponse.SERVING

    await send_table(running, plan, dt.datetime(2027, 1, 8, 16, 30, tzinfo=CHINA))  # the last day, under the notice
    done = await outbound_stage(running, plan)
    assert done.HasField("finished_at") and done.timeliness == S.TIMELINESS_ON_TIME
    await running.server.monitor.refresh_once()
    assert running.gauge("transfer_gateway_stages_finished", result="on_time", **PAIR) == 1
    assert running.gauge("transfer_gateway_stages_finished", result="late", **PAIR) == 0


async def test_a_notice_loaded_after_the_table_judges_it_again(running: Running, tmp_path: Path) -> None:
    plan = await begin_case(running)
    await send_table(running, plan, dt.datetime(2027, 1, 8, 16, 30, tzinfo=CHINA))  # late on the fallback
    assert (await outbound_stage(running, plan)).timeliness == S.TIMELINESS_LATE
    await running.server.monitor.refresh_once()
    assert running.gauge("transfer_gateway_stages_finished", result="late", **PAIR) == 1

    running.at(dt.datetime(2027, 1, 11, 9, tzinfo=CHINA))
    said = await load_notice(running, tmp_path)
    assert "1 finished stage(s) judged again (1 now on time, 0 now late)" in said
    again = await outbound_stage(running, plan)
    assert (again.timeliness, last_day(again), again.provisional) == (S.TIMELINESS_ON_TIME, dt.date(2027, 1, 8),
                                                                     False)
    await running.server.monitor.refresh_once()
    assert running.gauge("transfer_gateway_stages_finished", result="on_time", **PAIR) == 1
    assert running.gauge("transfer_gateway_stages_finished", result="late", **PAIR) == 0

"""Automatic transfer (免申请) end to end, over real gRPC and mTLS with the reference clients: a
suspended record and a new enrollment of one person in two provinces open the case without an
application, in either order, and the case runs as an applied one does."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from clients import automatic, builders
from clients.errors import GatewayRejected
from clients.platform import PlatformClient, PlatformConfig
from clients.roles import CaseOutcome
from clients.scenario import CasePlan, ReferencePlatform
from mitransfer.v1 import automatic_pb2, envelope_pb2, messages_pb2, tracking_pb2
from tests.support import GatewayHandle

EMPLOYEE, RESIDENT = builders.EMPLOYEE, builders.RESIDENT
S = tracking_pb2
AUTOMATIC = messages_pb2.TransferRequest.CHANNEL_AUTOMATIC
JIANGSU, ZHEJIANG, ANHUI = "320100", "330100", "340100"


class Platforms:
    """Jiangsu and Anhui hold suspended records; Zhejiang enrolls the person. Each plays the
    reference platform, answering what is delivered to it, until the test ends."""

    def __init__(self, clients: dict[str, PlatformClient]) -> None:
        self.clients = clients
        self.reference = {name: ReferencePlatform(client) for name, client in clients.items()}
        self.stop = asyncio.Event()
        self.tasks = [asyncio.create_task(p.run(self.stop)) for p in self.reference.values()]

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), timeout=5)


@pytest.fixture
async def platforms(gateway: GatewayHandle) -> AsyncIterator[Platforms]:
    address = f"127.0.0.1:{gateway.server.port}"
    root = str(gateway.pki.root)
    async with (
        PlatformClient.connect(PlatformConfig.dev("jiangsu", address, root)) as js,
        PlatformClient.connect(PlatformConfig.dev("zhejiang", address, root)) as zj,
        PlatformClient.connect(PlatformConfig.dev("anhui", address, root)) as ah,
    ):
        running = Platforms({"jiangsu": js, "zhejiang": zj, "anhui": ah})
        try:
            yield running
        finally:
            await running.close()


def record_plan(outbound: str = JIANGSU, *, seed: int = 21, balance_fen: int = 123_400,
                suspended: dt.date | None = None) -> CasePlan:
    """A suspended record at `outbound` of the synthetic person `seed`; its inbound side is unknown
    until the enrollment (ZHEJIANG is a placeholder the gateway's request replaces)."""
    return CasePlan.synthetic(outbound, ZHEJIANG, insurance_type=EMPLOYEE, balance_fen=balance_fen, seed=seed,
                              today=suspended or builders.today_in_china() - dt.timedelta(days=3))


def enrollment_of(plan: CasePlan, *, chosen: tuple[str, ...] = ()) -> automatic_pb2.Enrollment:
    return automatic.enrollment(ZHEJIANG, plan.person, EMPLOYEE, builders.today_in_china(),
                                outbound_agencies=chosen)


async def wait_for_state(client: PlatformClient, transfer_id: str, state: int, timeout: float = 10) -> \
        tracking_pb2.Case:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        case = await client.get_case(transfer_id)
        if case.state == state or asyncio.get_running_loop().time() > deadline:
            return case
        await asyncio.sleep(0.05)


async def test_a_record_then_an_enrollment_opens_and_completes_the_case(platforms: Platforms) -> None:
    plan = record_plan()
    js, zj = platforms.reference["jiangsu"], platforms.clients["zhejiang"]
    outcome = asyncio.create_task(js.play_automatic_outbound(plan))
    await asyncio.sleep(0.2)  # registered, nothing to match yet
    receipt = await zj.submit(enrollment_of(plan))
    assert list(receipt.automatic.opened_transfer_ids) == [plan.route.transfer_id]
    assert await asyncio.wait_for(outcome, 10) == CaseOutcome.COMPLETED
    case = await wait_for_state(zj, plan.route.transfer_id, S.CASE_STATE_COMPLETED)
    assert (case.state, case.channel, case.outbound, case.inbound, case.applicant) == (
        S.CASE_STATE_COMPLETED, AUTOMATIC, JIANGSU, ZHEJIANG, ZHEJIANG)
    kinds = [m.kind for m in case.messages]
    assert kinds[0] == envelope_pb2.MESSAGE_KIND_AUTOMATIC_TRANSFER_REQUEST and case.messages[0].sender == "gateway"
    assert envelope_pb2.MESSAGE_KIND_FUND_TRANSFER in kinds  # answered as today: notice, table, funds


async def test_an_enrollment_then_its_record_opens_the_case(platforms: Platforms) -> None:
    plan = record_plan(seed=22)
    zj = platforms.clients["zhejiang"]
    receipt = await zj.submit(enrollment_of(plan))
    assert list(receipt.automatic.opened_transfer_ids) == []  # no record yet: it waits, and says until when
    waiting = receipt.automatic.waiting_until.ToDatetime(dt.UTC) - receipt.accepted_at.ToDatetime(dt.UTC)
    assert waiting == dt.timedelta(days=90)
    outcome = await asyncio.wait_for(platforms.reference["jiangsu"].play_automatic_outbound(plan), 10)
    assert outcome == CaseOutcome.COMPLETED
    case = await zj.get_case(plan.route.transfer_id)
    assert case.channel == AUTOMATIC and case.state == S.CASE_STATE_COMPLETED


async def test_two_records_open_two_cases_oldest_first(platforms: Platforms) -> None:
    older = record_plan(ANHUI, seed=23, suspended=builders.today_in_china() - dt.timedelta(days=40))
    newer = replace(record_plan(JIANGSU, seed=23), route=builders.Route.new(JIANGSU, ZHEJIANG))
    outcomes = [asyncio.create_task(platforms.reference["anhui"].play_automatic_outbound(older)),
                asyncio.create_task(platforms.reference["jiangsu"].play_automatic_outbound(newer))]
    await asyncio.sleep(0.3)
    receipt = await platforms.clients["zhejiang"].submit(enrollment_of(older))
    assert list(receipt.automatic.opened_transfer_ids) == [older.route.transfer_id, newer.route.transfer_id]
    assert await asyncio.wait_for(asyncio.gather(*outcomes), 15) == [CaseOutcome.COMPLETED, CaseOutcome.COMPLETED]


async def test_an_enrollment_that_names_a_record_opens_only_that_one(platforms: Platforms) -> None:
    js_plan = record_plan(JIANGSU, seed=24)
    ah_plan = replace(record_plan(ANHUI, seed=24), route=builders.Route.new(ANHUI, ZHEJIANG))
    await platforms.reference["jiangsu"].register_record(js_plan)
    await platforms.reference["anhui"].register_record(ah_plan)
    receipt = await platforms.clients["zhejiang"].submit(enrollment_of(js_plan, chosen=(ANHUI,)))
    assert list(receipt.automatic.opened_transfer_ids) == [ah_plan.route.transfer_id]


async def test_no_record_opens_nothing_and_the_inbound_side_is_told(platforms: Platforms) -> None:
    plan = record_plan(seed=25)
    receipt = await platforms.clients["zhejiang"].submit(enrollment_of(plan))
    assert list(receipt.automatic.opened_transfer_ids) == [] and receipt.automatic.HasField("waiting_until")
    with pytest.raises(GatewayRejected) as unknown:
        await platforms.clients["zhejiang"].get_case(plan.route.transfer_id)
    assert unknown.value.reason == "CASE_NOT_FOUND"


async def test_a_withdrawn_record_and_an_opted_out_enrollment_open_nothing(platforms: Platforms) -> None:
    js, zj = platforms.clients["jiangsu"], platforms.clients["zhejiang"]
    withdrawn = record_plan(seed=26)
    record = automatic.suspended_record(JIANGSU, withdrawn.person, EMPLOYEE, withdrawn.suspension_date)
    await js.submit(record)
    await js.submit(automatic.record_withdrawal(
        record.header.sender, record.header.transfer_id, automatic.Withdrawn.REASON_RESUMED))
    assert list((await zj.submit(enrollment_of(withdrawn))).automatic.opened_transfer_ids) == []

    declined = record_plan(seed=27)
    report = enrollment_of(declined)
    await zj.submit(report)
    await zj.submit(automatic.opt_out(report.header.sender, report.header.message_id, "参保人选择自行申请"))
    late = automatic.suspended_record(JIANGSU, declined.person, EMPLOYEE, declined.suspension_date)
    assert list((await js.submit(late)).automatic.opened_transfer_ids) == []


async def test_the_applicant_side_withdraws_an_automatic_case(gateway: GatewayHandle) -> None:
    """The inbound side stands for the person's application: it may withdraw before funds move."""
    address, root = f"127.0.0.1:{gateway.server.port}", str(gateway.pki.root)
    async with (
        PlatformClient.connect(PlatformConfig.dev("jiangsu", address, root)) as js,
        PlatformClient.connect(PlatformConfig.dev("zhejiang", address, root)) as zj,
    ):
        plan = record_plan(seed=28)
        record = automatic.suspended_record(JIANGSU, plan.person, EMPLOYEE, plan.suspension_date)
        await js.submit(record)
        tid = record.header.transfer_id
        await zj.submit(enrollment_of(plan))
        route = builders.Route(tid, JIANGSU, ZHEJIANG)
        with pytest.raises(GatewayRejected) as not_applicant:
            await js.submit(builders.withdrawal(route, by_inbound=False))
        assert not_applicant.value.reason == "WITHDRAWAL_NOT_BY_APPLICANT"
        await zj.submit(builders.withdrawal(route, by_inbound=True, text="参保人撤回"))
        assert (await zj.get_case(tid)).state == S.CASE_STATE_WITHDRAWN


async def test_the_index_holds_no_certificate_number(gateway: GatewayHandle, platforms: Platforms) -> None:
    """Read the raw database: the index's tables hold the person only as a keyed hash, and the
    number is nowhere but inside the signed messages as they came (the log's evidence)."""
    plan = record_plan(seed=29)
    await platforms.reference["jiangsu"].register_record(plan)
    other = record_plan(seed=30)
    await platforms.clients["zhejiang"].submit(enrollment_of(other))  # waits, keyed
    await platforms.clients["zhejiang"].submit(enrollment_of(plan))   # opens the case
    number = plan.person.certificate_number.encode()
    with sqlite3.connect(gateway.database) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            cursor = db.execute(f"SELECT * FROM {table}")
            columns = [d[0] for d in cursor.description]
            for row in cursor.fetchall():
                for column, value in zip(columns, row, strict=True):
                    raw = value if isinstance(value, bytes) else str(value).encode()
                    if number in raw or other.person.certificate_number.encode() in raw:
                        assert column == "signed_message", (table, column)
        keys = db.execute("SELECT person_key FROM enrollments WHERE state = 'waiting'").fetchall()
    assert keys and all(len(k[0]) == 32 for k in keys)


async def race(submitters: list[PlatformClient], messages: list[object]) -> list[object]:
    """Submit every message at once (each signed once: a retry resends its bytes), spread over the
    clients; each one's receipt body or refusal."""
    async def one(i: int, message: object) -> object:
        try:
            return await submitters[i % len(submitters)].submit(message)  # type: ignore[arg-type]
        except GatewayRejected as err:
            return err
    return list(await asyncio.gather(*(one(i, m) for i, m in enumerate(messages))))


def race_messages(first: str, seed: int) -> tuple[list[object], list[object], list[str]]:
    """16 registrations of two records of one person (the same record resent, and sent again under
    new message ids) and 16 enrollments of that person, interleaved with `first` leading each pair:
    (jiangsu's and anhui's messages, zhejiang's, the records' ids)."""
    plan = record_plan(seed=seed)
    js = automatic.suspended_record(JIANGSU, plan.person, EMPLOYEE, plan.suspension_date)
    ah = automatic.suspended_record(ANHUI, plan.person, EMPLOYEE, plan.suspension_date - dt.timedelta(days=5))
    again = [automatic.suspended_record(JIANGSU, plan.person, EMPLOYEE, plan.suspension_date,
                                        transfer_id=js.header.transfer_id) for _ in range(4)]
    records: list[object] = [js, ah] * 6 + again
    reports: list[object] = [enrollment_of(plan) for _ in range(16)]
    return records, reports, [js.header.transfer_id, ah.header.transfer_id]


def opened_of(outcomes: list[object]) -> list[str]:
    """The cases the accepted messages opened, each message once (a resent message's receipt is its
    first one, which says what that one opened)."""
    first = {o.message_id: o for o in outcomes if isinstance(o, envelope_pb2.ReceiptBody)}
    return [t for o in first.values() for t in o.automatic.opened_transfer_ids]


@pytest.mark.parametrize("first", ["records", "enrollments"])
async def test_a_32_way_race_opens_exactly_one_case_per_record(platforms: Platforms, first: str) -> None:
    records, reports, ids = race_messages(first, seed=40 if first == "records" else 41)
    js, ah, zj = platforms.clients["jiangsu"], platforms.clients["anhui"], platforms.clients["zhejiang"]
    by_sender = {id(m): (ah if m.header.sender == ANHUI else js) for m in records}  # type: ignore[attr-defined]
    signed = {id(m): by_sender[id(m)].sign(m) for m in records}  # type: ignore[arg-type]

    async def send(message: object) -> object:
        if id(message) in signed:  # a registration: its sender's bytes, resent as they were signed
            try:
                return (await by_sender[id(message)].submit_signed(signed[id(message)])).body
            except GatewayRejected as err:
                return err
        return (await race([zj], [message]))[0]

    pairs = list(zip(records, reports, strict=True))
    ordered = [m for a, b in pairs for m in ((a, b) if first == "records" else (b, a))]
    outcomes = await asyncio.gather(*(send(m) for m in ordered))
    assert sorted(opened_of(outcomes)) == sorted(ids)
    refused = {o.reason for o in outcomes if isinstance(o, GatewayRejected)}
    assert refused <= {"TRANSFER_ID_IN_USE"}, refused
    for tid in ids:
        case = await zj.get_case(tid)
        requests = [m for m in case.messages if m.kind == envelope_pb2.MESSAGE_KIND_AUTOMATIC_TRANSFER_REQUEST]
        assert len(requests) == 1 and case.channel == AUTOMATIC


async def test_no_certificate_number_or_name_reaches_the_logs_or_the_metrics(
        gateway: GatewayHandle, platforms: Platforms, caplog: pytest.LogCaptureFixture) -> None:
    from prometheus_client import generate_latest

    caplog.set_level(logging.DEBUG)
    plan = record_plan(seed=31)
    outcome = asyncio.create_task(platforms.reference["jiangsu"].play_automatic_outbound(plan))
    await asyncio.sleep(0.2)
    await platforms.clients["zhejiang"].submit(enrollment_of(plan))
    assert await asyncio.wait_for(outcome, 10) == CaseOutcome.COMPLETED
    refused = automatic.suspended_record(JIANGSU, plan.person, EMPLOYEE, plan.suspension_date)
    refused.person.name = plan.person.name  # refused: the index takes no name; the refusal repeats none
    with pytest.raises(GatewayRejected) as caught:
        await platforms.clients["jiangsu"].submit(refused)
    await gateway.server.keeper.keep_once()
    exposed = generate_latest(gateway.server.prometheus).decode()
    assert "transfer_gateway_cases_opened_total" in exposed and "automatic_completion_workdays" in exposed
    assert 'channel="automatic"' in exposed
    logged = " ".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert "'transfer_id': '" in logged  # the structured fields are there, and nothing personal
    said = " ".join([logged, exposed, str(caught.value)])
    assert "automatic case opened" in caplog.text
    for secret in (plan.person.certificate_number, plan.person.certificate_number[:14], plan.person.name):
        assert secret not in said


async def test_a_platform_learns_nothing_of_a_person_it_did_not_report(platforms: Platforms) -> None:
    """Anhui is a side of neither the record nor the enrollment: it cannot see the case, touch the
    other agencies' index entries, or have the log prove their messages; the reporters can."""
    plan = record_plan(seed=32)
    js, zj, ah = platforms.clients["jiangsu"], platforms.clients["zhejiang"], platforms.clients["anhui"]
    record = automatic.suspended_record(JIANGSU, plan.person, EMPLOYEE, plan.suspension_date)
    await js.submit(record)
    report = enrollment_of(plan)
    opened = await zj.submit(report)
    tid = record.header.transfer_id
    assert list(opened.automatic.opened_transfer_ids) == [tid]
    with pytest.raises(GatewayRejected) as case:
        await ah.get_case(tid)
    assert case.value.reason == "CASE_NOT_FOUND"  # as for a transfer id never used
    foreign_withdrawal = automatic.record_withdrawal(
        record.header.sender, record.header.transfer_id, automatic.Withdrawn.REASON_RESUMED)
    foreign_withdrawal.header.sender = ANHUI
    with pytest.raises(GatewayRejected) as withdrawn:
        await ah.submit(foreign_withdrawal)
    assert withdrawn.value.reason == "RECORD_NOT_FOUND"
    foreign_opt_out = automatic.opt_out(report.header.sender, report.header.message_id)
    foreign_opt_out.header.sender = ANHUI
    with pytest.raises(GatewayRejected) as opted_out:
        await ah.submit(foreign_opt_out)
    assert opted_out.value.reason == "ENROLLMENT_NOT_FOUND"
    with pytest.raises(GatewayRejected) as proof:
        await ah.inclusion_proof(report.header.message_id)
    assert proof.value.reason == "MESSAGE_NOT_FOUND"
    own = await zj.inclusion_proof(report.header.message_id)
    assert own.leaf_index == opened.leaf_index  # the enrollment is a leaf of the log like any message


async def test_a_blocker_keeps_the_case_waiting_until_the_outbound_side_reports_it_resolved(
        platforms: Platforms) -> None:
    """Jiangsu finds arrears and an unsettled hospital stay: the automatic case waits (the person's
    stage runs, no agency's), and when Jiangsu reports them cleared it resumes by itself, no new
    application, and completes; the outbound and total clocks start again from the resolution."""
    from mitransfer.v1 import types_pb2

    plan = record_plan(seed=33)
    js, zj = platforms.reference["jiangsu"], platforms.clients["zhejiang"]
    blockers = [types_pb2.REASON_CODE_ARREARS, types_pb2.REASON_CODE_UNSETTLED_HOSPITAL_STAY]
    await js.register_record(plan, blockers)
    await zj.submit(enrollment_of(plan))
    tid = plan.route.transfer_id
    waiting = await wait_for_state(zj, tid, S.CASE_STATE_AWAITING_RESOLUTION)
    assert waiting.state == S.CASE_STATE_AWAITING_RESOLUTION and waiting.channel == AUTOMATIC
    stages = {s.stage: s for s in waiting.stages}
    resolution = stages[S.STAGE_RESOLUTION]
    assert resolution.owner == S.STAGE_OWNER_PERSON and not resolution.HasField("finished_at")
    assert stages[S.STAGE_OUTBOUND].HasField("finished_at") and stages[S.STAGE_TOTAL].HasField("finished_at")

    receipts = await js.resolve(tid, "欠费已补缴，住院已结算")
    assert receipts[0].kind == envelope_pb2.MESSAGE_KIND_BLOCKER_RESOLUTION
    done = await wait_for_state(zj, tid, S.CASE_STATE_COMPLETED)
    assert done.state == S.CASE_STATE_COMPLETED
    stages = {s.stage: s for s in done.stages}
    assert stages[S.STAGE_RESOLUTION].HasField("finished_at")
    for stage in (S.STAGE_OUTBOUND, S.STAGE_TOTAL):  # a new run each, from the resolution
        assert stages[stage].started_at == receipts[0].accepted_at
    kinds = [m.kind for m in done.messages]
    assert kinds.count(envelope_pb2.MESSAGE_KIND_AUTOMATIC_TRANSFER_REQUEST) == 1  # no new application
    assert kinds.index(envelope_pb2.MESSAGE_KIND_BLOCKER_RESOLUTION) < kinds.index(
        envelope_pb2.MESSAGE_KIND_FUND_TRANSFER)


async def test_a_refusal_for_another_reason_closes_a_waiting_case(platforms: Platforms) -> None:
    from mitransfer.v1 import types_pb2

    plan = record_plan(seed=34)
    js, jsc, zj = platforms.reference["jiangsu"], platforms.clients["jiangsu"], platforms.clients["zhejiang"]
    await js.register_record(plan, [types_pb2.REASON_CODE_MULTIPLE_INSURED_NUMBERS])
    await zj.submit(enrollment_of(plan))
    tid = plan.route.transfer_id
    await wait_for_state(zj, tid, S.CASE_STATE_AWAITING_RESOLUTION)
    route = builders.Route(tid, JIANGSU, ZHEJIANG)
    final = builders.outbound_notice_refused(route, plan.person, EMPLOYEE,
                                             [builders.reason(types_pb2.REASON_CODE_OTHER, "参保关系已终止")])
    await jsc.submit(final)
    assert (await zj.get_case(tid)).state == S.CASE_STATE_REFUSED


async def test_an_operator_closes_a_case_whose_blockers_are_never_cleared(gateway: GatewayHandle,
                                                                         platforms: Platforms) -> None:
    """Nobody applied for an automatic case, and the person may never clear its blockers: an operator
    closes it with a reason, signed and delivered to both sides, and its resolution stage ends."""
    from mitransfer.v1 import admin_pb2, types_pb2

    plan = record_plan(seed=35)
    js, zj = platforms.reference["jiangsu"], platforms.clients["zhejiang"]
    await js.register_record(plan, [types_pb2.REASON_CODE_ARREARS])
    await zj.submit(enrollment_of(plan))
    tid = plan.route.transfer_id
    assert (await wait_for_state(zj, tid, S.CASE_STATE_AWAITING_RESOLUTION)).state == S.CASE_STATE_AWAITING_RESOLUTION
    close = admin_pb2.CloseCaseRequest(transfer_id=tid, reason="欠费逾期未补缴，经与参保人确认终止本次转移")
    receipt = await gateway.admin("operator").CloseCase(close)
    assert await gateway.admin("operator").CloseCase(close) == receipt  # closing again: the same closure
    closed = await wait_for_state(zj, tid, S.CASE_STATE_CLOSED_BY_OPERATOR)
    assert closed.state == S.CASE_STATE_CLOSED_BY_OPERATOR
    assert {s.stage: s for s in closed.stages}[S.STAGE_RESOLUTION].HasField("finished_at")
    closure = envelope_pb2.ReceiptBody.FromString(receipt.body).message_id
    acknowledged = tracking_pb2.DELIVERY_STATE_ACKNOWLEDGED
    of_closure = "sequence = (SELECT sequence FROM messages WHERE message_id = ?) AND state = ?"
    for _ in range(100):  # both sides' reference platforms take it and acknowledge it
        if gateway.count("deliveries", of_closure, closure, acknowledged) == 2:
            break
        await asyncio.sleep(0.05)
    assert gateway.count("deliveries", of_closure, closure, acknowledged) == 2


@pytest.mark.parametrize("index_first", [True, False], ids=["index-then-case", "case-then-index"])
async def test_a_message_id_names_one_message_across_the_case_log_and_the_index(gateway: GatewayHandle,
                                                                                index_first: bool) -> None:
    """One message id, used by Jiangsu for a suspended record (the index) and for an outbound notice
    (a case): whichever comes first is accepted, the other is refused as a reuse, and each, sent
    again as it was, is answered with its own receipt, in either order."""
    import grpc

    from tests.support import failure, sign

    person, suspended = builders.sample_person(36 if index_first else 37), builders.today_in_china()
    record = automatic.suspended_record(JIANGSU, person, EMPLOYEE, suspended)
    notice = builders.outbound_notice_accepted(builders.Route.new(JIANGSU, ZHEJIANG), person, EMPLOYEE, suspended)
    notice.header.message_id = record.header.message_id
    first, second = (record, notice) if index_first else (notice, record)
    stub = gateway.exchange("jiangsu")
    signed_first = sign(first, gateway.signer("jiangsu"))
    receipt = await stub.Submit(signed_first)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Submit(sign(second, gateway.signer("jiangsu")))
    refusal = failure(caught.value)
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.ALREADY_EXISTS, "MESSAGE_ID_REUSED")
    assert await stub.Submit(sign(first, gateway.signer("jiangsu"))) == receipt  # new bytes, the same payload
    message_id = record.header.message_id
    stored = gateway.count("messages", "message_id = ?", message_id) + \
        gateway.count("index_messages", "message_id = ?", message_id)
    assert stored == 1
    assert gateway.count("cases") == (0 if index_first else 1)
    assert gateway.count("suspended_records") == (1 if index_first else 0)

"""One test per business story of a transfer, over real gRPC and mTLS, with the reference
client (`clients.platform.PlatformClient`: signing once, verified receipts, safe retries)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest

from clients import builders
from clients.errors import GatewayRejected
from clients.platform import PlatformClient, PlatformConfig
from clients.scenario import CasePlan, outbound_messages
from gateway.core.messages import BusinessMessage
from mitransfer.v1 import admin_pb2, envelope_pb2, exchange_pb2, messages_pb2, tracking_pb2, types_pb2
from tests.support import GatewayHandle, failure, sign

EMPLOYEE, RESIDENT = types_pb2.INSURANCE_TYPE_EMPLOYEE_BASIC, types_pb2.INSURANCE_TYPE_RESIDENT_BASIC
Ack = messages_pb2.Acknowledgement
S = tracking_pb2


@pytest.fixture
async def platforms(gateway: GatewayHandle) -> AsyncIterator[tuple[PlatformClient, PlatformClient]]:
    address = f"127.0.0.1:{gateway.server.port}"
    async with (
        PlatformClient.connect(PlatformConfig.dev("jiangsu", address, str(gateway.pki.root))) as js,
        PlatformClient.connect(PlatformConfig.dev("zhejiang", address, str(gateway.pki.root))) as zj,
    ):
        yield js, zj


def answer(to: messages_pb2.Header, status: int, **fields: object) -> messages_pb2.Acknowledgement:
    ack = messages_pb2.Acknowledgement(answers_message_id=to.message_id, status=status, **fields)  # type: ignore[arg-type]
    ack.header.CopyFrom(builders.header(to.receiver, to.sender, to.transfer_id))
    return ack


def accept(table: messages_pb2.Header, inbound_insurance: int = EMPLOYEE,
           enrolled: dt.date | None = None) -> messages_pb2.Acknowledgement:
    """The inbound acceptance, enrolled today unless said otherwise."""
    d = enrolled or builders.today_in_china()
    return answer(table, Ack.STATUS_ACCEPTED, inbound_insurance_type=inbound_insurance,
                  inbound_enrollment_date=types_pb2.Date(year=d.year, month=d.month, day=d.day))


def request(plan: CasePlan, inbound_insurance: int) -> messages_pb2.TransferRequest:
    r = messages_pb2.TransferRequest(person=plan.person, outbound_insurance_type=plan.insurance_type,
                                     inbound_insurance_type=inbound_insurance,
                                     channel=messages_pb2.TransferRequest.CHANNEL_ONLINE)
    r.header.CopyFrom(builders.header(plan.route.inbound, plan.route.outbound, plan.route.transfer_id))
    return r


def withdrawal(plan: CasePlan, by_inbound: bool) -> messages_pb2.Withdrawal:
    w = messages_pb2.Withdrawal(text="申请人撤回")
    r = plan.route
    w.header.CopyFrom(builders.header(*((r.inbound, r.outbound) if by_inbound else (r.outbound, r.inbound)),
                                      r.transfer_id))
    return w


async def state(client: PlatformClient, plan: CasePlan) -> tracking_pb2.Case:
    return await client.get_case(plan.route.transfer_id)


async def received(gateway: GatewayHandle, platform: str) -> list[BusinessMessage | admin_pb2.ReviewDecision
                                                                   | admin_pb2.CaseClosed]:
    """What the platform's subscription brings within half a second (each acknowledged)."""
    from gateway.core.messages import parse

    stub = gateway.exchange(platform)
    call = stub.Subscribe(exchange_pb2.SubscribeRequest())
    out: list[BusinessMessage | admin_pb2.ReviewDecision | admin_pb2.CaseClosed] = []
    try:
        while True:
            d = await asyncio.wait_for(call.read(), 0.5)
            if d.message.kind == envelope_pb2.MESSAGE_KIND_REVIEW_DECISION:
                out.append(admin_pb2.ReviewDecision.FromString(d.message.payload))
            elif d.message.kind == envelope_pb2.MESSAGE_KIND_CASE_CLOSED:
                out.append(admin_pb2.CaseClosed.FromString(d.message.payload))
            elif d.message.kind != envelope_pb2.MESSAGE_KIND_CASE_EXPIRED:
                out.append(parse(d.message.kind, d.message.payload))
            await stub.AckDelivery(exchange_pb2.AckDeliveryRequest(
                message_id=envelope_pb2.ReceiptBody.FromString(d.receipt.body).message_id))
    except TimeoutError:
        pass
    finally:
        call.cancel()
    return out


async def rejected(call: object) -> GatewayRejected:
    with pytest.raises(GatewayRejected) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def complete_inbound(zj: PlatformClient, plan: CasePlan, msgs: list[BusinessMessage],
                           inbound_insurance: int = EMPLOYEE) -> None:
    table = msgs[1].header
    await zj.submit(accept(table, inbound_insurance))
    if plan.funds_expected:
        await zj.submit(answer(msgs[2].header, Ack.STATUS_FUNDS_CREDITED, credited_amount_fen=plan.balance_fen))
    await zj.submit(answer(table, Ack.STATUS_TRANSFER_IN_COMPLETED))


async def test_employee_to_employee_happy_path(gateway: GatewayHandle,
                                               platforms: tuple[PlatformClient, PlatformClient]) -> None:
    js, zj = platforms
    plan = CasePlan.synthetic("320100", "330100", insurance_type=EMPLOYEE, balance_fen=345_600, seed=11)
    msgs = outbound_messages(plan)
    for m in msgs:
        await js.submit(m)
    assert [type(m).__name__ for m in await received(gateway, "zhejiang")] == [
        "OutboundNotice", "InformationTable", "FundTransfer"]
    await complete_inbound(zj, plan, msgs)
    case = await state(js, plan)
    assert case.state == S.CASE_STATE_COMPLETED and case.continuity.continuous
    # Completion reaches the outbound side: its relationship there ends.
    answers = await received(gateway, "jiangsu")
    assert [a.status for a in answers if isinstance(a, Ack)] == [  # type: ignore[union-attr]
        Ack.STATUS_ACCEPTED, Ack.STATUS_FUNDS_CREDITED, Ack.STATUS_TRANSFER_IN_COMPLETED]


async def test_employee_to_resident_cross_scheme(gateway: GatewayHandle,
                                                 platforms: tuple[PlatformClient, PlatformClient]) -> None:
    """310 → 390 with a balance: the inbound scheme is fixed by the request, the table reports the
    balance as retained at the outbound side, no money moves, and every later message agrees."""
    js, zj = platforms
    plan = CasePlan.synthetic("320100", "330100", insurance_type=EMPLOYEE, balance_fen=88_000, seed=12,
                              inbound_insurance_type=RESIDENT)
    await zj.submit(request(plan, RESIDENT))  # applied at the inbound side, for resident insurance
    msgs = outbound_messages(plan)
    assert len(msgs) == 2  # notice and table: no fund transfer
    notice, table = msgs
    wrong = builders.outbound_notice_accepted(plan.route, plan.person, EMPLOYEE, plan.suspension_date,
                                              inbound_insurance_type=EMPLOYEE)
    assert (await rejected(js.submit(wrong))).reason == "INSURANCE_TYPE_MISMATCH"
    await js.submit(notice)
    moved = builders.information_table(plan.route, plan.person, EMPLOYEE, plan.suspension_date, plan.periods, 0)
    moved.account_balance_fen = 88_000  # as if the balance were transferred out
    assert (await rejected(js.submit(moved))).reason == "BALANCE_STAYS_AT_OUTBOUND"
    assert (table.account_balance_fen, table.account_balance_retained_fen) == (0, 88_000)
    await js.submit(table)
    fund = builders.fund_transfer(plan.route, 88_000, builders.fund_account("320100", receiving=False),
                                  builders.fund_account("330100", receiving=True), "R2", builders.today_in_china())
    assert (await rejected(js.submit(fund))).reason == "NO_FUNDS_ACROSS_SCHEMES"
    assert (await rejected(zj.submit(accept(table.header, EMPLOYEE)))).reason == "INSURANCE_TYPE_MISMATCH"
    await zj.submit(accept(table.header, RESIDENT))  # accepted at once: no funds to wait for
    await zj.submit(answer(table.header, Ack.STATUS_TRANSFER_IN_COMPLETED))
    case = await state(zj, plan)
    assert (case.state, case.applicant, case.inbound_insurance_type) == (S.CASE_STATE_COMPLETED, "330100", RESIDENT)
    assert gateway.count("fund_movements") == 0


async def test_notice_that_opens_a_case_states_the_inbound_scheme(
        gateway: GatewayHandle, platforms: tuple[PlatformClient, PlatformClient]) -> None:
    js, _ = platforms
    plan = CasePlan.synthetic("320100", "330100", insurance_type=EMPLOYEE, balance_fen=5_000, seed=14)
    notice = outbound_messages(plan)[0]
    notice.inbound_insurance_type = types_pb2.INSURANCE_TYPE_UNSPECIFIED
    refusal = await rejected(js.submit(notice))
    assert (refusal.reason, refusal.metadata.get("field")) == ("INBOUND_INSURANCE_TYPE_REQUIRED",
                                                               "inbound_insurance_type")
    assert gateway.count("cases") == 0


async def test_resident_to_resident_waits_for_the_next_year(gateway: GatewayHandle,
                                                           platforms: tuple[PlatformClient, PlatformClient]) -> None:
    """Suspended this year: the acceptance is refused RESIDENT_SAME_YEAR and the inbound side
    rejects with that reason; suspended last year, enrolled this year: completed."""
    js, zj = platforms
    this_year = CasePlan.synthetic("320100", "330100", insurance_type=RESIDENT, seed=15,
                                   today=builders.today_in_china())
    notice, table = outbound_messages(this_year)
    for m in (notice, table):
        await js.submit(m)
    refusal = await rejected(zj.submit(accept(table.header, RESIDENT)))
    assert (refusal.reason, refusal.metadata.get("field")) == ("RESIDENT_SAME_YEAR", "inbound_enrollment_date")
    await zj.submit(answer(table.header, Ack.STATUS_REJECTED,
                           reasons=[builders.reason(types_pb2.REASON_CODE_RESIDENT_SAME_YEAR)]))
    assert (await state(js, this_year)).state == S.CASE_STATE_INBOUND_REJECTED

    next_year = CasePlan.synthetic("320100", "330100", insurance_type=RESIDENT, seed=16)
    assert next_year.suspension_date.year < builders.today_in_china().year
    msgs = outbound_messages(next_year)
    for m in msgs:
        await js.submit(m)
    await complete_inbound(zj, next_year, msgs, inbound_insurance=RESIDENT)
    assert (await state(js, next_year)).state == S.CASE_STATE_COMPLETED


async def test_overlapping_coverage_and_future_suspension_are_refused(
        gateway: GatewayHandle, platforms: tuple[PlatformClient, PlatformClient]) -> None:
    """不得重复参保: an enrollment at the inbound side seven months before the suspension is refused,
    not counted as a zero gap; a suspension date after today is refused on its field."""
    js, zj = platforms
    plan = CasePlan.synthetic("320100", "330100", insurance_type=RESIDENT, seed=17)
    msgs = outbound_messages(plan)
    for m in msgs:
        await js.submit(m)
    early = accept(msgs[1].header, RESIDENT, enrolled=plan.suspension_date - dt.timedelta(days=214))
    refusal = await rejected(zj.submit(early))
    assert (refusal.reason, refusal.metadata.get("field")) == ("OVERLAPPING_COVERAGE", "inbound_enrollment_date")
    assert (await state(js, plan)).state == S.CASE_STATE_TABLE_SENT

    later = CasePlan.synthetic("320100", "330100", insurance_type=EMPLOYEE, seed=18)
    notice = outbound_messages(later)[0]
    tomorrow = builders.today_in_china() + dt.timedelta(days=1)
    notice.suspension_date.CopyFrom(builders.proto_date(tomorrow))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.exchange("jiangsu").Submit(sign(notice, gateway.signer("jiangsu")))
    refusal_status = failure(caught.value)
    assert (refusal_status.code, refusal_status.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["suspension_date"])


async def test_table_with_overlapping_periods_counts_months_once(
        gateway: GatewayHandle, platforms: tuple[PlatformClient, PlatformClient]) -> None:
    """A history across two schemes and regions with shared months, months counted as paid and a
    person number: accepted when the cumulative months count each month once, refused otherwise."""
    js, zj = platforms
    plan = CasePlan.synthetic("320100", "330100", insurance_type=EMPLOYEE, balance_fen=6_000, seed=19)
    s = plan.suspension_date
    periods = (
        builders.contribution_period("320500", (2000, 1), (2009, 12), 60, months_deemed=60,
                                     insurance_type=EMPLOYEE),
        builders.contribution_period("320500", (2009, 7), (2012, 12), 42, insurance_type=RESIDENT),
        builders.contribution_period("320100", (2013, 1), (s.year, s.month), (s.year - 2013) * 12 + s.month),
    )
    await js.submit(builders.outbound_notice_accepted(plan.route, plan.person, EMPLOYEE, s))
    counted_once = 120 + 36 + periods[2].months_paid  # 2009-07..2009-12 shared: counted once
    twice = builders.information_table(plan.route, plan.person, EMPLOYEE, s, periods, 6_000,
                                       cumulative_months=counted_once)
    twice.cumulative_months = counted_once + 6
    refusal = await rejected(js.submit(twice))
    assert "cumulative_months" in [f for f, _ in refusal.field_violations]
    table = builders.information_table(plan.route, plan.person, EMPLOYEE, s, periods, 6_000,
                                       cumulative_months=counted_once)
    assert table.person.psn_no
    await js.submit(table)
    assert (await state(zj, plan)).state == S.CASE_STATE_TABLE_SENT


async def test_resident_to_resident_moves_no_funds(gateway: GatewayHandle,
                                                   platforms: tuple[PlatformClient, PlatformClient]) -> None:
    js, zj = platforms
    plan = CasePlan.synthetic("320100", "330100", insurance_type=RESIDENT, balance_fen=0, seed=13)
    msgs = outbound_messages(plan)
    assert len(msgs) == 2
    for m in msgs:
        await js.submit(m)
    fund = builders.fund_transfer(plan.route, 100, builders.fund_account("320100", receiving=False),
                                  builders.fund_account("330100", receiving=True), "R1", builders.today_in_china())
    assert (await rejected(js.submit(fund))).reason == "NO_FUNDS_FOR_RESIDENT_INSURANCE"
    await complete_inbound(zj, plan, msgs, inbound_insurance=RESIDENT)
    assert (await state(js, plan)).state == S.CASE_STATE_COMPLETED
    assert gateway.count("fund_movements") == 0


@pytest.mark.parametrize("reason", [
    types_pb2.REASON_CODE_UNSETTLED_HOSPITAL_STAY, types_pb2.REASON_CODE_ARREARS,
    types_pb2.REASON_CODE_MULTIPLE_INSURED_NUMBERS, types_pb2.REASON_CODE_INCOMPLETE_CONTRIBUTIONS,
    types_pb2.REASON_CODE_NOT_SUSPENDED, types_pb2.REASON_CODE_ACCOUNT_OVERDRAWN, types_pb2.REASON_CODE_RETIRED,
], ids=lambda r: types_pb2.ReasonCode.Name(r).removeprefix("REASON_CODE_").lower())
async def test_outbound_refusal_reaches_the_applicant(gateway: GatewayHandle,
                                                      platforms: tuple[PlatformClient, PlatformClient],
                                                      reason: int) -> None:
    js, zj = platforms
    plan = CasePlan.synthetic("320100", "330100", insurance_type=EMPLOYEE, balance_fen=5_000, seed=20 + reason)
    await zj.submit(request(plan, EMPLOYEE))
    await received(gateway, "jiangsu")
    refusal = builders.outbound_notice_refused(plan.route, plan.person, EMPLOYEE, [builders.reason(reason)])
    await js.submit(refusal)
    [notice] = await received(gateway, "zhejiang")
    assert isinstance(notice, messages_pb2.OutboundNotice) and [r.code for r in notice.reasons] == [reason]
    assert (await state(zj, plan)).state == S.CASE_STATE_REFUSED
    assert (await rejected(js.submit(outbound_messages(plan)[1]))).reason == "CASE_CLOSED"


@pytest.mark.parametrize("approve", [True, False])
async def test_large_balance_review(gateway: GatewayHandle, platforms: tuple[PlatformClient, PlatformClient],
                                    approve: bool) -> None:
    """Zhejiang reviews its outbound balances above 10,000 yuan (its policy in the dev registry):
    the fund transfer waits for a reviewer scoped to Zhejiang."""
    js, zj = platforms
    plan = CasePlan.synthetic("330100", "320100", insurance_type=EMPLOYEE, balance_fen=1_500_000, seed=30)
    msgs = outbound_messages(plan)
    for m in msgs:
        await zj.submit(m)
    assert [type(m).__name__ for m in await received(gateway, "jiangsu")] == ["OutboundNotice", "InformationTable"]
    await gateway.admin("reviewer").ReviewFundTransfer(admin_pb2.ReviewFundTransferRequest(
        transfer_id=plan.route.transfer_id, approve=approve, comment="" if approve else "金额与台账不符"))
    later = {type(m).__name__ for m in await received(gateway, "jiangsu")}
    if approve:
        assert later == {"ReviewDecision", "FundTransfer"}
        await complete_inbound(js, plan, msgs)
        assert (await state(zj, plan)).state == S.CASE_STATE_COMPLETED
    else:
        assert later == {"ReviewDecision"}
        assert (await state(zj, plan)).state == S.CASE_STATE_REVIEW_REJECTED


async def test_review_decisions_at_once(gateway: GatewayHandle,
                                       platforms: tuple[PlatformClient, PlatformClient]) -> None:
    """Two identical approvals at once both get the one receipt, and the fund transfer is delivered
    once; an approval racing a rejection: one wins, the other is REVIEW_ALREADY_DECIDED."""
    js, zj = platforms
    plans = [CasePlan.synthetic("330100", "320100", insurance_type=EMPLOYEE, balance_fen=1_500_000, seed=s)
             for s in (33, 34)]
    for plan in plans:
        for m in outbound_messages(plan):
            await zj.submit(m)
    reviewer = gateway.admin("reviewer")
    twice = admin_pb2.ReviewFundTransferRequest(transfer_id=plans[0].route.transfer_id, approve=True)
    first, second = await asyncio.gather(reviewer.ReviewFundTransfer(twice), reviewer.ReviewFundTransfer(twice))
    assert first == second
    raced = await asyncio.gather(
        reviewer.ReviewFundTransfer(admin_pb2.ReviewFundTransferRequest(
            transfer_id=plans[1].route.transfer_id, approve=True)),
        reviewer.ReviewFundTransfer(admin_pb2.ReviewFundTransferRequest(
            transfer_id=plans[1].route.transfer_id, approve=False, comment="金额与台账不符")),
        return_exceptions=True)
    refused = [r for r in raced if isinstance(r, grpc.aio.AioRpcError)]
    assert len(refused) == 1 and failure(refused[0]).reason == "REVIEW_ALREADY_DECIDED"
    funds = [m for m in await received(gateway, "jiangsu") if isinstance(m, messages_pb2.FundTransfer)]
    won = S.CASE_STATE_FUNDS_SENT if not isinstance(raced[0], grpc.aio.AioRpcError) else S.CASE_STATE_REVIEW_REJECTED
    assert len(funds) == (2 if won == S.CASE_STATE_FUNDS_SENT else 1)
    assert [(await state(js, plan)).state for plan in plans] == [S.CASE_STATE_FUNDS_SENT, won]


async def test_region_policy_decides_review_and_waiting_period(
        gateway: GatewayHandle, platforms: tuple[PlatformClient, PlatformClient]) -> None:
    """Review and waiting period are each region's own: Jiangsu reviews nothing, so its 15,000 yuan
    move at once; after a gap of more than 3 months Hangzhou's waiting period (3 months, its own
    policy) applies to its new member, Nanjing's (6, Jiangsu's policy) to its own."""
    js, zj = platforms
    suspended = builders.today_in_china() - dt.timedelta(days=200)
    to_hangzhou = CasePlan.synthetic("320100", "330100", insurance_type=EMPLOYEE, balance_fen=1_500_000, seed=31,
                                     today=suspended)
    to_nanjing = CasePlan.synthetic("330200", "320100", insurance_type=EMPLOYEE, balance_fen=5_000, seed=32,
                                    today=suspended)
    for plan, sender, receiver in ((to_hangzhou, js, zj), (to_nanjing, zj, js)):
        msgs = outbound_messages(plan)
        for m in msgs:
            await sender.submit(m)
        assert (await state(sender, plan)).state == S.CASE_STATE_FUNDS_SENT  # no review on either way
        await complete_inbound(receiver, plan, msgs)
    hangzhou, nanjing = (await state(js, to_hangzhou)).continuity, (await state(js, to_nanjing)).continuity
    assert hangzhou.gap_months > 3 and not hangzhou.continuous
    assert (hangzhou.waiting_period_months, nanjing.waiting_period_months) == (3, 6)


async def test_withdrawal_before_and_after_funds(gateway: GatewayHandle,
                                                 platforms: tuple[PlatformClient, PlatformClient]) -> None:
    js, zj = platforms
    before = CasePlan.synthetic("320100", "330100", insurance_type=EMPLOYEE, balance_fen=9_000, seed=40)
    await zj.submit(request(before, EMPLOYEE))
    await js.submit(outbound_messages(before)[0])
    assert (await rejected(js.submit(withdrawal(before, by_inbound=False)))).reason == "WITHDRAWAL_NOT_BY_APPLICANT"
    await zj.submit(withdrawal(before, by_inbound=True))
    assert (await state(js, before)).state == S.CASE_STATE_WITHDRAWN
    assert any(isinstance(m, messages_pb2.Withdrawal) for m in await received(gateway, "jiangsu"))

    after = CasePlan.synthetic("320100", "330100", insurance_type=EMPLOYEE, balance_fen=9_000, seed=41)
    await zj.submit(request(after, EMPLOYEE))
    for m in outbound_messages(after):
        await js.submit(m)
    assert (await rejected(zj.submit(withdrawal(after, by_inbound=True)))).reason == "WITHDRAWAL_AFTER_FUNDS"


async def test_second_application_while_one_is_open(gateway: GatewayHandle,
                                                    platforms: tuple[PlatformClient, PlatformClient]) -> None:
    _, zj = platforms
    first = CasePlan.synthetic("320100", "330100", insurance_type=EMPLOYEE, balance_fen=1_000, seed=50)
    await zj.submit(request(first, EMPLOYEE))
    second = CasePlan(builders.Route.new("320100", "330200"), first.person, EMPLOYEE, first.suspension_date,
                      first.periods, first.balance_fen)
    signed = sign(request(second, EMPLOYEE), gateway.signer("zhejiang"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.exchange("zhejiang").Submit(signed)
    refusal = failure(caught.value)
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CASE_ALREADY_OPEN")
    assert refusal.metadata["open_transfer_id"] == first.route.transfer_id
    assert gateway.count("cases") == 1


async def test_several_suspended_records_one_case_each(gateway: GatewayHandle,
                                                       platforms: tuple[PlatformClient, PlatformClient]) -> None:
    js, zj = platforms
    nanjing = CasePlan.synthetic("320100", "330100", insurance_type=EMPLOYEE, balance_fen=2_000, seed=60)
    suzhou = CasePlan(builders.Route.new("320500", "330100"), nanjing.person, EMPLOYEE, nanjing.suspension_date,
                      tuple(builders.sample_periods("320500", nanjing.suspension_date, 61)), 3_000)
    for plan in (nanjing, suzhou):
        await zj.submit(request(plan, EMPLOYEE))
        for m in outbound_messages(plan):
            await js.submit(m)
    assert {(await state(zj, p)).state for p in (nanjing, suzhou)} == {S.CASE_STATE_FUNDS_SENT}


async def test_message_on_a_closed_case_is_refused(gateway: GatewayHandle,
                                                   platforms: tuple[PlatformClient, PlatformClient]) -> None:
    js, zj = platforms
    plan = CasePlan.synthetic("320100", "330100", insurance_type=EMPLOYEE, balance_fen=7_700, seed=70)
    msgs = outbound_messages(plan)
    for m in msgs:
        await js.submit(m)
    await complete_inbound(zj, plan, msgs)
    late = answer(msgs[1].header, Ack.STATUS_RECEIVED)
    assert (await rejected(zj.submit(late))).reason == "CASE_CLOSED"
    messages_before = gateway.count("messages")
    assert (await rejected(js.submit(withdrawal(plan, by_inbound=False)))).reason == "CASE_CLOSED"
    assert gateway.count("messages") == messages_before


async def test_funds_come_back_after_an_inbound_rejection(
        gateway: GatewayHandle, platforms: tuple[PlatformClient, PlatformClient]) -> None:
    """The inbound side rejects after the money arrived: the case waits for its return (the inbound
    side's return stage), the reference outbound platform confirms the FundReturn it receives (its
    own return receipt stage), and only then is the case closed. The settlement ledger shows the
    money returned: sent = credited + returned + held + in flight, at every step."""
    from clients.scenario import ReferencePlatform

    js, zj = platforms
    plan = CasePlan.synthetic("320100", "330100", insurance_type=EMPLOYEE, balance_fen=66_600, seed=80)
    msgs = outbound_messages(plan)
    for m in msgs:
        await js.submit(m)
    table, fund = msgs[1], msgs[2]
    assert isinstance(fund, messages_pb2.FundTransfer)
    await zj.submit(answer(table.header, Ack.STATUS_REJECTED,
                           reasons=[builders.reason(types_pb2.REASON_CODE_NOT_ENROLLED_AT_INBOUND)]))
    case = await state(zj, plan)
    assert case.state == S.CASE_STATE_AWAITING_FUND_RETURN
    back_stage = next(s for s in case.stages if s.stage == S.STAGE_RETURN)
    assert (back_stage.owner, back_stage.owner_agency) == (S.STAGE_OWNER_INBOUND, "330100")
    line = await settlement_line(gateway)
    assert (line.in_flight_fen, line.awaiting_return_fen, line.returned_fen) == (66_600, 66_600, 0)

    short = builders.fund_return(fund, builders.fund_account("330100", receiving=False), fund.payer, "RET-1",
                                 builders.today_in_china())
    short.amount_fen = 60_000
    assert (await rejected(zj.submit(short))).reason == "RETURN_AMOUNT_MISMATCH"
    outbound = ReferencePlatform(js)
    stop = asyncio.Event()
    confirming = asyncio.create_task(outbound.run(stop))
    try:
        await zj.submit(builders.fund_return(fund, builders.fund_account("330100", receiving=False), fund.payer,
                                             "RET-2", builders.today_in_china()))
        for _ in range(50):
            if (await state(js, plan)).state == S.CASE_STATE_INBOUND_REJECTED:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await confirming
    case = await state(js, plan)
    assert case.state == S.CASE_STATE_INBOUND_REJECTED and not outbound.errors
    owners = {s.stage: (s.owner, s.HasField("finished_at")) for s in case.stages}
    assert owners[S.STAGE_RETURN] == (S.STAGE_OWNER_INBOUND, True)
    assert owners[S.STAGE_RETURN_RECEIPT] == (S.STAGE_OWNER_OUTBOUND, True)
    line = await settlement_line(gateway)
    assert (line.sent_fen, line.returned_fen, line.in_flight_fen, line.awaiting_return_fen, line.rejected_fen) == (
        66_600, 66_600, 0, 0, 66_600)
    assert line.sent_fen == line.credited_fen + line.returned_fen + line.held_fen + line.in_flight_fen
    assert "returned" in await log_verifies(gateway)  # the return's fund statuses are in the log too


async def log_verifies(gateway: GatewayHandle) -> str:
    """`transfer-gateway log verify` on the running gateway's store: the log, recomputed, agrees
    with the cases, the fund movements and their totals (returns and closures included)."""
    import io

    from gateway.app import logtool
    from gateway.store.sqlite import SQLiteConfig

    out = io.StringIO()
    registry = logtool.load_registry(gateway.pki.registry)
    assert await asyncio.to_thread(logtool.verify_store, SQLiteConfig(gateway.database), registry, out) == 0
    return out.getvalue()


async def settlement_line(gateway: GatewayHandle) -> admin_pb2.SettlementLine:
    today = builders.today_in_china()
    report = await gateway.admin("operator").GetSettlement(admin_pb2.GetSettlementRequest(
        date=builders.proto_date(today)))
    [line] = report.lines
    return line


@pytest.mark.parametrize(("first_month", "rule", "continuous"), [
    ((2026, 4), "SWITCH_UNDER_TWO_YEARS", False),   # 8 months insured: the back-payment rule does not apply
    ((2023, 1), "CONTINUOUS", True),                 # 47 months: it does
])
async def test_a_switch_of_scheme_keeps_continuity_only_after_two_years(
        gateway: GatewayHandle, platforms: tuple[PlatformClient, PlatformClient], first_month: tuple[int, int],
        rule: str, continuous: bool) -> None:
    js, zj = platforms
    suspended = dt.date(2026, 11, 30)
    plan = CasePlan(builders.Route.new("320100", "330100"), builders.sample_person(90 + first_month[0]), EMPLOYEE,
                    suspended, (builders.contribution_period("320100", first_month, (2026, 11),
                                                             (2026 - first_month[0]) * 12 + 12 - first_month[1]),),
                    0, RESIDENT)
    msgs = outbound_messages(plan)
    for m in msgs:
        await js.submit(m)
    await complete_inbound(zj, plan, msgs, inbound_insurance=RESIDENT)
    found = (await state(zj, plan)).continuity
    assert (found.rule, found.continuous, found.gap_months) == (rule, continuous, 0)
    assert found.insured_months == plan.periods[0].months_paid


async def test_the_inbound_clock_starts_when_the_funds_are_released(
        gateway: GatewayHandle, platforms: tuple[PlatformClient, PlatformClient]) -> None:
    """Held for review, the inbound side cannot act: no inbound stage runs, the review stage (the
    reviewers' clock) does; approved, the inbound stage starts with the release."""
    _, zj = platforms
    plan = CasePlan.synthetic("330100", "320100", insurance_type=EMPLOYEE, balance_fen=2_000_000, seed=95)
    for m in outbound_messages(plan):
        await zj.submit(m)
    held = await state(zj, plan)
    assert held.state == S.CASE_STATE_HELD_FOR_REVIEW
    assert {s.stage: s.owner for s in held.stages if not s.HasField("finished_at")} == {
        S.STAGE_REVIEW: S.STAGE_OWNER_REVIEWER, S.STAGE_TOTAL: S.STAGE_OWNER_BOTH}
    receipt = await gateway.admin("reviewer").ReviewFundTransfer(admin_pb2.ReviewFundTransferRequest(
        transfer_id=plan.route.transfer_id, approve=True))
    released = envelope_pb2.ReceiptBody.FromString(receipt.body).accepted_at
    inbound = next(s for s in (await state(zj, plan)).stages if s.stage == S.STAGE_INBOUND)
    assert (inbound.owner, inbound.owner_agency, inbound.started_at) == (S.STAGE_OWNER_INBOUND, "320100", released)


async def test_an_unanswered_request_is_closed_only_by_an_operator(
        gateway: GatewayHandle, platforms: tuple[PlatformClient, PlatformClient]) -> None:
    """No expiry: the request stays open (escalated when its outbound limit passes) until an operator
    closes it with `transfer-gateway case close`; both sides receive the signed closure, and the
    reference platform of the applicant's side stops waiting."""
    import sys
    from pathlib import Path

    from clients.scenario import ReferencePlatform

    js, zj = platforms
    plan = CasePlan.synthetic("320100", "330100", insurance_type=EMPLOYEE, balance_fen=1_000, seed=96)
    await zj.submit(request(plan, EMPLOYEE))
    applicant = ReferencePlatform(zj)
    stop = asyncio.Event()
    listening = asyncio.create_task(applicant.run(stop))
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "case", "close", plan.route.transfer_id, "--reason",
            "转出地逾期未答复", "--gateway", f"127.0.0.1:{gateway.server.port}", "--certs", str(gateway.pki.root),
            cwd=Path(__file__).resolve().parent.parent.parent, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert out.decode().startswith(f"closed {plan.route.transfer_id}: case_closed ")
        for _ in range(50):
            if gateway.count("deliveries", "sequence IN (SELECT sequence FROM messages WHERE kind = ?)"
                             " AND state = ?", envelope_pb2.MESSAGE_KIND_CASE_CLOSED,
                             S.DELIVERY_STATE_ACKNOWLEDGED) >= 1:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await listening
    assert (await state(js, plan)).state == S.CASE_STATE_CLOSED_BY_OPERATOR
    outbound_side = [m for m in await received(gateway, "jiangsu")
                     if isinstance(m, admin_pb2.CaseClosed)]
    assert [c.reason for c in outbound_side] == ["转出地逾期未答复"]
    await log_verifies(gateway)

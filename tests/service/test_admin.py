"""Review holds, the Admin service and settlement, end to end over real mTLS: a large fund
transfer reaches the inbound side only after a reviewer approves it; the decision is signed by
the gateway and delivered to both sides; only operators with the right role may call Admin."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from clients import builders
from clients.scenario import CasePlan, outbound_messages
from gateway.app.devpki import DevPaths
from gateway.app.operator import OperatorConfig, connect
from gateway.core.messages import REVIEW_DECISION_PAYLOAD_TYPE
from gateway.core.signing import LocalSigner, pae
from mitransfer.v1 import admin_pb2, envelope_pb2, exchange_pb2, messages_pb2, tracking_pb2, types_pb2
from tests.support import GatewayHandle, failure, sign

Ack = messages_pb2.Acknowledgement
BIG = 2_500_000  # above Zhejiang's review threshold in the dev registry (1,000,000 fen); from Hangzhou


def _token(text: str) -> str:
    """A page token as the service writes one, of any text."""
    return base64.urlsafe_b64encode(text.encode()).decode()


async def send_big_case(gateway: GatewayHandle, balance: int = BIG) -> list[messages_pb2.FundTransfer]:
    plan = CasePlan.synthetic("330100", "320100", balance_fen=balance, seed=balance % 97)
    msgs = outbound_messages(plan)
    stub, key = gateway.exchange("zhejiang"), gateway.signer("zhejiang")
    for m in msgs:
        await stub.Submit(sign(m, key))
    return msgs  # type: ignore[return-value]


async def drain(gateway: GatewayHandle, platform: str, seconds: float = 0.6) -> list[exchange_pb2.Delivery]:
    """Every delivery that arrives within `seconds`, each acknowledged."""
    stub = gateway.exchange(platform)
    call = stub.Subscribe(exchange_pb2.SubscribeRequest())
    got = []
    try:
        while True:
            delivery = await asyncio.wait_for(call.read(), seconds)
            got.append(delivery)
            mid = envelope_pb2.ReceiptBody.FromString(delivery.receipt.body).message_id
            await stub.AckDelivery(exchange_pb2.AckDeliveryRequest(message_id=mid))
    except TimeoutError:
        pass
    finally:
        call.cancel()
    return got


def kinds(deliveries: list[exchange_pb2.Delivery]) -> list[int]:
    return [d.message.kind for d in deliveries]


async def test_held_transfer_waits_for_approval_then_flows(gateway: GatewayHandle) -> None:
    notice, _, fund = await send_big_case(gateway)
    tid = notice.header.transfer_id
    before = await drain(gateway, "jiangsu")
    assert kinds(before) == [envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE, envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE]
    case = await gateway.tracking("zhejiang").GetCase(tracking_pb2.GetCaseRequest(transfer_id=tid))
    assert case.state == tracking_pb2.CASE_STATE_HELD_FOR_REVIEW
    assert case.messages[-1].delivery_state == tracking_pb2.DELIVERY_STATE_HELD
    held = await gateway.admin("reviewer").ListHeldFundTransfers(admin_pb2.ListHeldFundTransfersRequest())
    assert [(h.transfer_id, h.amount_fen) for h in held.held] == [(tid, BIG)]

    receipt = await gateway.admin("reviewer").ReviewFundTransfer(
        admin_pb2.ReviewFundTransferRequest(transfer_id=tid, approve=True))
    again = await gateway.admin("reviewer").ReviewFundTransfer(
        admin_pb2.ReviewFundTransferRequest(transfer_id=tid, approve=True))
    assert again == receipt  # the same decision again: the same receipt
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.admin("reviewer").ReviewFundTransfer(
            admin_pb2.ReviewFundTransferRequest(transfer_id=tid, approve=False, comment="changed my mind"))
    assert (failure(caught.value).code, failure(caught.value).reason) == (
        grpc.StatusCode.FAILED_PRECONDITION, "REVIEW_ALREADY_DECIDED")

    after = await drain(gateway, "jiangsu")
    assert sorted(kinds(after)) == [envelope_pb2.MESSAGE_KIND_FUND_TRANSFER, envelope_pb2.MESSAGE_KIND_REVIEW_DECISION]
    outbound_side = await drain(gateway, "zhejiang")
    assert kinds(outbound_side) == [envelope_pb2.MESSAGE_KIND_REVIEW_DECISION]
    signed = outbound_side[0].message
    gateway_key = LocalSigner.from_pem("gateway-dev-1", gateway.pki.gateway_signing_key.read_bytes()).verifying_key()
    assert signed.key_id == "gateway-dev-1"
    assert gateway_key.verify(signed.signature, pae(REVIEW_DECISION_PAYLOAD_TYPE, signed.payload))
    decision = admin_pb2.ReviewDecision.FromString(signed.payload)
    assert (decision.approved, decision.reviewer, decision.fund_transfer_message_id) == (
        True, "reviewer", fund.header.message_id)
    case = await gateway.tracking("jiangsu").GetCase(tracking_pb2.GetCaseRequest(transfer_id=tid))
    assert case.state == tracking_pb2.CASE_STATE_FUNDS_SENT


async def test_rejected_transfer_is_never_delivered_and_closes_the_case(gateway: GatewayHandle) -> None:
    notice, _, _ = await send_big_case(gateway)
    tid = notice.header.transfer_id
    reviewer = gateway.admin("reviewer")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await reviewer.ReviewFundTransfer(admin_pb2.ReviewFundTransferRequest(transfer_id=tid, approve=False))
    assert failure(caught.value).fields == ["comment"]
    await reviewer.ReviewFundTransfer(
        admin_pb2.ReviewFundTransferRequest(transfer_id=tid, approve=False, comment="账户核对不符"))
    inbound = await drain(gateway, "jiangsu")
    assert envelope_pb2.MESSAGE_KIND_FUND_TRANSFER not in kinds(inbound)
    assert envelope_pb2.MESSAGE_KIND_REVIEW_DECISION in kinds(inbound)
    case = await gateway.tracking("zhejiang").GetCase(tracking_pb2.GetCaseRequest(transfer_id=tid))
    assert case.state == tracking_pb2.CASE_STATE_REVIEW_REJECTED
    fund_view = next(m for m in case.messages if m.kind == envelope_pb2.MESSAGE_KIND_FUND_TRANSFER)
    assert fund_view.delivery_state == tracking_pb2.DELIVERY_STATE_CANCELLED


async def test_held_transfers_come_a_page_at_a_time_oldest_first(gateway: GatewayHandle) -> None:
    tids = [(await send_big_case(gateway, BIG + i))[0].header.transfer_id for i in range(3)]
    reviewer = gateway.admin("reviewer")
    first = await reviewer.ListHeldFundTransfers(admin_pb2.ListHeldFundTransfersRequest(page_size=2))
    assert [h.transfer_id for h in first.held] == tids[:2] and first.next_page_token
    rest = await reviewer.ListHeldFundTransfers(
        admin_pb2.ListHeldFundTransfersRequest(page_size=2, page_token=first.next_page_token))
    assert ([h.transfer_id for h in rest.held], rest.next_page_token) == (tids[2:], "")
    whole = await reviewer.ListHeldFundTransfers(admin_pb2.ListHeldFundTransfersRequest())
    assert [(h.transfer_id, h.amount_fen) for h in whole.held] == [(t, BIG + i) for i, t in enumerate(tids)]
    for request, field in ((admin_pb2.ListHeldFundTransfersRequest(page_size=501), "page_size"),
                           (admin_pb2.ListHeldFundTransfersRequest(page_token="bm90IGEgdG9rZW4="), "page_token"),
                           (admin_pb2.ListHeldFundTransfersRequest(page_token="%%%"), "page_token"),
                           # a transfer id no case has: PostgreSQL's text cannot even hold it
                           (admin_pb2.ListHeldFundTransfersRequest(page_token=_token("1 a\x00b")), "page_token")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await reviewer.ListHeldFundTransfers(request)
        refusal = failure(caught.value)
        assert (refusal.code, refusal.reason, refusal.fields) == (
            grpc.StatusCode.INVALID_ARGUMENT, "QUERY_INVALID", [field])


async def test_admin_needs_an_operator_with_the_role(gateway: GatewayHandle) -> None:
    from mitransfer.v1 import admin_pb2_grpc

    platform_as_admin = admin_pb2_grpc.AdminStub(gateway.channel("zhejiang"))
    for call in (
        platform_as_admin.ListHeldFundTransfers(admin_pb2.ListHeldFundTransfersRequest()),
        gateway.admin("operator").ReviewFundTransfer(admin_pb2.ReviewFundTransferRequest(transfer_id="x")),
        gateway.admin("reviewer").GetSettlement(admin_pb2.GetSettlementRequest()),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert failure(caught.value).code == grpc.StatusCode.PERMISSION_DENIED


async def test_settlement_report_over_grpc(gateway: GatewayHandle) -> None:
    await send_big_case(gateway)                     # held
    small = await send_big_case(gateway, 40_000)     # sent, then credited below
    stub, key = gateway.exchange("jiangsu"), gateway.signer("jiangsu")
    await drain(gateway, "jiangsu")
    table, fund = small[1].header, small[2].header
    for ack in (
        messages_pb2.Acknowledgement(answers_message_id=table.message_id, status=Ack.STATUS_ACCEPTED,
                                     inbound_insurance_type=types_pb2.INSURANCE_TYPE_EMPLOYEE_BASIC,
                                     inbound_enrollment_date=builders.proto_date(builders.today_in_china())),
        messages_pb2.Acknowledgement(answers_message_id=fund.message_id, status=Ack.STATUS_FUNDS_CREDITED,
                                     credited_amount_fen=40_000),
    ):
        ack.header.CopyFrom(builders.header("320100", "330100", table.transfer_id))
        await stub.Submit(sign(ack, key))
    today = dt.datetime.now(dt.UTC).astimezone(dt.timezone(dt.timedelta(hours=8))).date()
    pki = gateway.pki
    operator = OperatorConfig(address=f"127.0.0.1:{gateway.server.port}", operator="operator", ca=pki.ca,
                              cert=pki.operator_cert("operator"), key=pki.operator_key("operator"),
                              registry=pki.registry, timeout=10)
    async with connect(operator) as calls:
        report = await calls.settlement(today)
    [line] = report.lines
    assert (line.outbound_province, line.inbound_province, line.transfers) == ("33", "32", 2)
    assert (line.sent_fen, line.held_fen, line.credited_fen, line.in_flight_fen, line.rejected_fen) == (
        BIG + 40_000, BIG, 40_000, 0, 0)
    case = await gateway.tracking("zhejiang").GetCase(tracking_pb2.GetCaseRequest(transfer_id=table.transfer_id))
    assert case.continuity.continuous and case.continuity.gap_months == 0


async def test_identical_decisions_at_once_get_the_one_receipt_and_opposite_ones_one_winner(
        gateway: GatewayHandle) -> None:
    """Decided inside the case's transaction: four identical approvals at once are one decision with
    one receipt; an approval racing a rejection has exactly one winner, the other is refused
    REVIEW_ALREADY_DECIDED, and the money moves (or not) once."""
    tid = (await send_big_case(gateway))[0].header.transfer_id
    approve = admin_pb2.ReviewFundTransferRequest(transfer_id=tid, approve=True)
    receipts = await asyncio.gather(*(gateway.admin("reviewer").ReviewFundTransfer(approve) for _ in range(4)))
    assert all(r == receipts[0] for r in receipts)
    assert gateway.count("messages", "transfer_id = ? AND kind = ?", tid,
                         envelope_pb2.MESSAGE_KIND_REVIEW_DECISION) == 1

    other = (await send_big_case(gateway, BIG + 7))[0].header.transfer_id
    outcomes = await asyncio.gather(
        gateway.admin("reviewer").ReviewFundTransfer(admin_pb2.ReviewFundTransferRequest(transfer_id=other,
                                                                                         approve=True)),
        gateway.admin("reviewer").ReviewFundTransfer(admin_pb2.ReviewFundTransferRequest(
            transfer_id=other, approve=False, comment="额度核对不符")),
        return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(refused) == 1 and failure(refused[0]).reason == "REVIEW_ALREADY_DECIDED"
    assert gateway.count("messages", "transfer_id = ? AND kind = ?", other,
                         envelope_pb2.MESSAGE_KIND_REVIEW_DECISION) == 1
    assert gateway.count("fund_movements", "transfer_id = ? AND status IN ('sent', 'rejected')", other) == 1


async def test_an_unanswered_request_is_escalated_and_closed_only_by_an_operator(pki: DevPaths,
                                                                                 tmp_path: Path) -> None:
    """Ten working days without an outbound notice: the request shows overdue and counts as
    escalated, and stays open; an operator closes it with a reason, signed and delivered to both
    sides; closing it again gives the same receipt; too late for the notice then."""
    from gateway.app.assembly import assemble
    from tests.conftest import test_config

    now = [dt.datetime.now(dt.UTC)]
    server = assemble(test_config(pki, tmp_path / "g.db"), clock=lambda: now[0])
    await server.start()
    gateway = GatewayHandle(server=server, pki=pki, database=tmp_path / "g.db")
    try:
        plan = CasePlan.synthetic("330100", "320100", balance_fen=1000, seed=5)
        request = messages_pb2.TransferRequest(
            person=plan.person, outbound_insurance_type=plan.insurance_type, inbound_insurance_type=plan.insurance_type,
            channel=messages_pb2.TransferRequest.CHANNEL_COUNTER)
        request.header.CopyFrom(builders.header("320100", "330100", plan.route.transfer_id))
        await gateway.exchange("jiangsu").Submit(sign(request, gateway.signer("jiangsu")))
        tid = plan.route.transfer_id
        now[0] += dt.timedelta(days=30)  # far past ten working days, whatever the holidays
        await server.monitor.refresh_once()
        case = await gateway.tracking("jiangsu").GetCase(tracking_pb2.GetCaseRequest(transfer_id=tid))
        outbound_stage = next(s for s in case.stages if s.stage == tracking_pb2.STAGE_OUTBOUND)
        assert case.state == tracking_pb2.CASE_STATE_OPENED
        assert (outbound_stage.timeliness, outbound_stage.owner, outbound_stage.owner_agency) == (
            tracking_pb2.TIMELINESS_OVERDUE, tracking_pb2.STAGE_OWNER_OUTBOUND, "330100")
        assert server.prometheus.get_sample_value(
            "transfer_gateway_requests_escalated", {"outbound_province": "33", "inbound_province": "32"}) == 1

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.admin("reviewer").CloseCase(admin_pb2.CloseCaseRequest(transfer_id=tid, reason="x"))
        assert failure(caught.value).code == grpc.StatusCode.PERMISSION_DENIED  # an operator's decision
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.admin("operator").CloseCase(admin_pb2.CloseCaseRequest(transfer_id=tid, reason=" "))
        assert failure(caught.value).fields == ["reason"]
        close = admin_pb2.CloseCaseRequest(transfer_id=tid, reason="转出地逾期未答复，申请人同意另行申请")
        receipt = await gateway.admin("operator").CloseCase(close)
        assert await gateway.admin("operator").CloseCase(close) == receipt
        case = await gateway.tracking("jiangsu").GetCase(tracking_pb2.GetCaseRequest(transfer_id=tid))
        assert case.state == tracking_pb2.CASE_STATE_CLOSED_BY_OPERATOR
        for platform in ("jiangsu", "zhejiang"):
            closed = [d for d in await drain(gateway, platform)
                      if d.message.kind == envelope_pb2.MESSAGE_KIND_CASE_CLOSED]
            assert len(closed) == 1
            gateway_key = LocalSigner.from_pem("gateway-dev-1", pki.gateway_signing_key.read_bytes()).verifying_key()
            signed = closed[0].message
            assert gateway_key.verify(signed.signature, pae(admin_pb2.CaseClosed.DESCRIPTOR.full_name, signed.payload))
            assert admin_pb2.CaseClosed.FromString(signed.payload).reason == close.reason
        notice = outbound_messages(plan)[0]
        notice.header.created_at.FromDatetime(now[0])  # fresh by the gateway's clock
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.exchange("zhejiang").Submit(sign(notice, gateway.signer("zhejiang")))
        assert failure(caught.value).reason == "CASE_CLOSED"
        assert server.prometheus.get_sample_value("transfer_gateway_cases_closed_by_operator_total") == 1
    finally:
        await gateway.close_channels()
        await server.stop(grace=0.5)


async def test_a_reviewer_decides_only_its_provinces_transfers(pki: DevPaths, tmp_path: Path) -> None:
    """The registry scopes the dev reviewer to Anhui (34) and lets Jiangsu (32) review its own
    transfers above 100 yuan: a Zhejiang transfer is still held (Zhejiang's policy), but this
    reviewer neither sees it nor may decide it; a Jiangsu transfer of 200 yuan is held too."""
    import json

    from gateway.app.assembly import assemble
    from tests.conftest import test_config

    data = json.loads(pki.registry.read_text(encoding="utf-8"))
    next(o for o in data["operators"] if o["id"] == "reviewer")["provinces"] = ["34"]
    next(p for p in data["policies"] if p["region"] == "32")["review_above_fen"] = 10_000
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps(data), encoding="utf-8")
    server = assemble(replace(test_config(pki, tmp_path / "g.db"), registry=registry))
    await server.start()
    gateway = GatewayHandle(server=server, pki=pki, database=tmp_path / "g.db")
    try:
        zhejiang = (await send_big_case(gateway))[0].header.transfer_id
        plan = CasePlan.synthetic("320100", "330100", balance_fen=20_000, seed=3)
        for m in outbound_messages(plan):
            await gateway.submit("jiangsu", m)
        for tid in (zhejiang, plan.route.transfer_id):
            case = await gateway.tracking("jiangsu").GetCase(tracking_pb2.GetCaseRequest(transfer_id=tid))
            assert case.state == tracking_pb2.CASE_STATE_HELD_FOR_REVIEW
        reviewer = gateway.admin("reviewer")
        assert list((await reviewer.ListHeldFundTransfers(admin_pb2.ListHeldFundTransfersRequest())).held) == []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await reviewer.ReviewFundTransfer(admin_pb2.ReviewFundTransferRequest(transfer_id=zhejiang, approve=True))
        refusal = failure(caught.value)
        assert (refusal.code, refusal.reason, refusal.metadata["province"]) == (
            grpc.StatusCode.PERMISSION_DENIED, "REVIEWER_NOT_OF_PROVINCE", "33")
        assert gateway.count("messages", "kind = ?", envelope_pb2.MESSAGE_KIND_REVIEW_DECISION) == 0
    finally:
        await gateway.close_channels()
        await server.stop(grace=0.5)

"""The Exchange and Tracking services end to end: real gRPC over real mTLS on loopback, a real
SQLite store. Each refusal is checked for its status code, its reason or field, and for leaving
nothing behind."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import builders
from clients.scenario import CasePlan, outbound_messages
from gateway.core.signing import LocalSigner
from gateway.service.exchange import RecentReceipts
from mitransfer.v1 import envelope_pb2, exchange_pb2, messages_pb2, tracking_pb2, types_pb2
from tests.support import GatewayHandle, failure, sign

EMPLOYEE = types_pb2.INSURANCE_TYPE_EMPLOYEE_BASIC
RESIDENT = types_pb2.INSURANCE_TYPE_RESIDENT_BASIC
Ack = messages_pb2.Acknowledgement


def plan(insurance: int = EMPLOYEE, balance: int = 123_456, seed: int = 1,
         outbound: str = "320100", inbound: str = "330100") -> CasePlan:
    return CasePlan.synthetic(outbound, inbound, insurance_type=insurance, balance_fen=balance, seed=seed)


async def refused(call: object) -> tuple[grpc.StatusCode, str, list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    f = failure(caught.value)
    return f.code, f.reason, f.fields


def body(receipt: envelope_pb2.Receipt) -> envelope_pb2.ReceiptBody:
    return envelope_pb2.ReceiptBody.FromString(receipt.body)


async def test_receipt_is_signed_by_the_gateway_and_attests_the_payload(gateway: GatewayHandle) -> None:
    import hashlib

    notice = outbound_messages(plan())[0]
    signed = sign(notice, gateway.signer("jiangsu"))
    receipt = await gateway.exchange("jiangsu").Submit(signed)
    b = body(receipt)
    assert b.message_id == notice.header.message_id and b.sequence >= 1
    assert b.payload_sha256 == hashlib.sha256(signed.payload).digest()
    gateway_key = LocalSigner.from_pem("gateway-dev-1", gateway.pki.gateway_signing_key.read_bytes())
    from gateway.core.signing import pae
    assert gateway_key.verifying_key().verify(receipt.signature, pae("mitransfer.v1.ReceiptBody", receipt.body))


async def test_replay_returns_original_receipt_and_conflict_is_refused(gateway: GatewayHandle) -> None:
    notice = outbound_messages(plan())[0]
    signed = sign(notice, gateway.signer("jiangsu"))
    stub = gateway.exchange("jiangsu")
    first = await stub.Submit(signed)
    assert await stub.Submit(signed) == first
    other = messages_pb2.OutboundNotice()
    other.CopyFrom(notice)
    other.suspension_date.day = 1 if notice.suspension_date.day != 1 else 2
    code, reason, _ = await refused(stub.Submit(sign(other, gateway.signer("jiangsu"))))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "MESSAGE_ID_REUSED")
    assert gateway.count("messages") == 1


async def test_flipped_byte_or_foreign_key_is_unauthenticated_and_stores_nothing(gateway: GatewayHandle) -> None:
    signed = sign(outbound_messages(plan())[0], gateway.signer("jiangsu"))
    stub = gateway.exchange("jiangsu")
    for i in (0, len(signed.payload) // 2, len(signed.payload) - 1):
        tampered = envelope_pb2.SignedMessage()
        tampered.CopyFrom(signed)
        tampered.payload = signed.payload[:i] + bytes([signed.payload[i] ^ 0x01]) + signed.payload[i + 1:]
        assert (await refused(stub.Submit(tampered)))[:2] == (grpc.StatusCode.UNAUTHENTICATED, "SIGNATURE_INVALID")
    wrong_kind = envelope_pb2.SignedMessage()
    wrong_kind.CopyFrom(signed)
    wrong_kind.kind = envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE  # the signature binds the kind
    assert (await refused(stub.Submit(wrong_kind)))[:2] == (grpc.StatusCode.UNAUTHENTICATED, "SIGNATURE_INVALID")
    foreign = sign(outbound_messages(plan())[0], gateway.signer("zhejiang"))
    assert (await refused(stub.Submit(foreign)))[:2] == (grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_SIGNING_KEY")
    assert gateway.count("messages") == 0 and gateway.count("cases") == 0


async def test_undecodable_request_is_invalid_and_the_log_keeps_the_bytes_as_sent(gateway: GatewayHandle) -> None:
    submit = gateway.channel("jiangsu").unary_unary("/mitransfer.v1.Exchange/Submit")
    code, reason, fields = await refused(submit(b"\xff\xff\xff not protobuf"))
    assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "PAYLOAD_UNDECODABLE", ["request"])
    # Its fields in reverse order: the same signed message to the gateway, other bytes than a
    # serializer writes. The log keeps what arrived, not a re-serialization of it.
    signed = sign(outbound_messages(plan())[0], gateway.signer("jiangsu"))
    fields_alone = []
    for descriptor, value in signed.ListFields():
        alone = envelope_pb2.SignedMessage()
        setattr(alone, descriptor.name, value)
        fields_alone.append(alone.SerializeToString())
    sent = b"".join(reversed(fields_alone))
    assert sent != signed.SerializeToString() and envelope_pb2.SignedMessage.FromString(sent) == signed
    receipt = envelope_pb2.Receipt.FromString(await submit(sent))
    assert gateway.count("messages", "signed_message = ? AND sequence = ?", sent, body(receipt).sequence) == 1


async def test_unknown_method_is_unimplemented(gateway: GatewayHandle) -> None:
    for path in ("/mitransfer.v1.Exchange/Nope", "/nowhere.Service/Method"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.channel("jiangsu").unary_unary(path)(b"")
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_platform_may_send_only_as_its_own_agencies(gateway: GatewayHandle) -> None:
    # Zhejiang signs with its own key a message claiming Jiangsu's agency as sender.
    notice = outbound_messages(plan(outbound="320100", inbound="330100"))[0]
    code, reason, _ = await refused(gateway.exchange("zhejiang").Submit(sign(notice, gateway.signer("zhejiang"))))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "AGENCY_NOT_OF_PLATFORM")
    assert gateway.count("messages") == 0


async def test_unregistered_receiver_is_invalid(gateway: GatewayHandle) -> None:
    notice = outbound_messages(plan(inbound="330300"))[0]  # well formed, not in the registry
    code, reason, fields = await refused(gateway.exchange("jiangsu").Submit(sign(notice, gateway.signer("jiangsu"))))
    assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_AGENCY", ["header.receiver"])


async def test_invalid_field_names_the_path_and_stores_nothing(gateway: GatewayHandle) -> None:
    notice = outbound_messages(plan())[0]
    assert isinstance(notice, messages_pb2.OutboundNotice)
    notice.person.certificate_number = notice.person.certificate_number[:-1] + (
        "0" if notice.person.certificate_number[-1] != "0" else "1")
    code, _, fields = await refused(gateway.exchange("jiangsu").Submit(sign(notice, gateway.signer("jiangsu"))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "person.certificate_number" in fields
    assert gateway.count("messages") == 0


async def test_no_client_certificate_is_refused(gateway: GatewayHandle) -> None:
    signed = sign(outbound_messages(plan())[0], gateway.signer("jiangsu"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.exchange(None).Submit(signed, timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert gateway.count("messages") == 0


async def test_case_rules_refuse_with_the_rule_named(gateway: GatewayHandle) -> None:
    stub, key = gateway.exchange("jiangsu"), gateway.signer("jiangsu")
    notice, table, fund = outbound_messages(plan(balance=50_000))
    code, reason, _ = await refused(stub.Submit(sign(table, key)))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CASE_NOT_OPENED")
    await stub.Submit(sign(notice, key))
    code, reason, _ = await refused(stub.Submit(sign(fund, key)))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "STATE_FORBIDS_MESSAGE")
    await stub.Submit(sign(table, key))
    assert isinstance(fund, messages_pb2.FundTransfer)
    wrong = messages_pb2.FundTransfer()
    wrong.CopyFrom(fund)
    wrong.header.message_id = builders.new_id()
    wrong.amount_fen += 1
    code, reason, _ = await refused(stub.Submit(sign(wrong, key)))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "FUND_AMOUNT_MISMATCH")
    await stub.Submit(sign(fund, key))
    second = messages_pb2.FundTransfer()
    second.CopyFrom(fund)
    second.header.message_id = builders.new_id()
    code, reason, _ = await refused(stub.Submit(sign(second, key)))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "FUND_TRANSFER_ALREADY_ACCEPTED")
    assert gateway.count("fund_movements") == 1


async def test_resident_case_has_no_fund_transfer(gateway: GatewayHandle) -> None:
    stub, key = gateway.exchange("jiangsu"), gateway.signer("jiangsu")
    p = plan(insurance=RESIDENT, balance=0)
    notice, table = outbound_messages(p)
    await stub.Submit(sign(notice, key))
    await stub.Submit(sign(table, key))
    fund = builders.fund_transfer(p.route, 100, builders.fund_account("320100", receiving=False),
                                  builders.fund_account("330100", receiving=True), "REF1", builders.today_in_china())
    code, reason, _ = await refused(stub.Submit(sign(fund, key)))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_FUNDS_FOR_RESIDENT_INSURANCE")
    assert gateway.count("fund_movements") == 0


async def test_32_clients_racing_fund_transfers_move_money_once(gateway: GatewayHandle) -> None:
    key = gateway.signer("jiangsu")
    stubs = [gateway.exchange("jiangsu") for _ in range(4)]
    # Same signed fund transfer from 32 clients: one movement, every client gets the same receipt.
    notice, table, fund = outbound_messages(plan(seed=7))
    await stubs[0].Submit(sign(notice, key))
    await stubs[0].Submit(sign(table, key))
    same = sign(fund, key)
    receipts = await asyncio.gather(*(stubs[i % 4].Submit(same) for i in range(32)))
    assert len({r.SerializeToString() for r in receipts}) == 1
    # 32 different fund transfers for another case: exactly one accepted.
    p = plan(seed=8)
    notice, table, _ = outbound_messages(p)
    await stubs[0].Submit(sign(notice, key))
    await stubs[0].Submit(sign(table, key))
    rivals = [sign(builders.fund_transfer(
        p.route, p.balance_fen, builders.fund_account("320100", receiving=False),
        builders.fund_account("330100", receiving=True), f"RACE{i:03d}", builders.today_in_china()), key)
        for i in range(32)]
    results = await asyncio.gather(*(stubs[i % 4].Submit(r) for i, r in enumerate(rivals)), return_exceptions=True)
    winners = [r for r in results if isinstance(r, envelope_pb2.Receipt)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1 and len(losers) == 31
    assert {failure(e).code for e in losers} == {grpc.StatusCode.FAILED_PRECONDITION}
    assert gateway.count("fund_movements") == 2


async def test_subscription_delivers_in_order_and_isolates_platforms(gateway: GatewayHandle) -> None:
    stub, key = gateway.exchange("jiangsu"), gateway.signer("jiangsu")
    cases = [outbound_messages(plan(seed=s)) for s in range(3)]
    sent = [m.header.message_id for msgs in cases for m in msgs]
    for msgs in cases:
        for m in msgs:
            await stub.Submit(sign(m, key))
    receiver = gateway.exchange("zhejiang")
    call = receiver.Subscribe(exchange_pb2.SubscribeRequest())
    got: list[str] = []
    while len(got) < len(sent):
        delivery = await asyncio.wait_for(call.read(), 5)
        mid = body(delivery.receipt).message_id
        got.append(mid)
        await receiver.AckDelivery(exchange_pb2.AckDeliveryRequest(message_id=mid))
    call.cancel()
    assert sorted(got) == sorted(sent)
    for msgs in cases:  # within a case, the order of acceptance
        ids = [m.header.message_id for m in msgs]
        assert [g for g in got if g in ids] == ids
    # Anhui sees nothing of it; it may not subscribe for Zhejiang's agencies nor ack its deliveries.
    anhui = gateway.exchange("anhui")
    code, reason, _ = await refused(anhui.Subscribe(exchange_pb2.SubscribeRequest(agencies=["330100"])).read())
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "AGENCY_NOT_OF_PLATFORM")
    code, _, _ = await refused(anhui.AckDelivery(exchange_pb2.AckDeliveryRequest(message_id=sent[0])))
    assert code == grpc.StatusCode.NOT_FOUND
    call = anhui.Subscribe(exchange_pb2.SubscribeRequest())
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(call.read(), 0.5)
    call.cancel()


async def test_unacknowledged_delivery_comes_again_then_dead_letters(gateway: GatewayHandle) -> None:
    notice = outbound_messages(plan())[0]
    await gateway.exchange("jiangsu").Submit(sign(notice, gateway.signer("jiangsu")))
    receiver = gateway.exchange("zhejiang")
    attempts = []
    for _ in range(3):  # max_attempts is 3 in the test configuration
        call = receiver.Subscribe(exchange_pb2.SubscribeRequest())
        delivery = await asyncio.wait_for(call.read(), 5)
        attempts.append(delivery.attempt)
        call.cancel()  # never acknowledged
    assert attempts == [1, 2, 3]
    await asyncio.sleep(0.7)  # the last lease (0.5 s) expires
    call = receiver.Subscribe(exchange_pb2.SubscribeRequest())
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(call.read(), 0.5)
    call.cancel()
    case = await gateway.tracking("jiangsu").GetCase(tracking_pb2.GetCaseRequest(transfer_id=notice.header.transfer_id))
    assert case.messages[0].delivery_state == tracking_pb2.DELIVERY_STATE_DEAD_LETTER
    assert case.messages[0].delivery_attempts == 3
    await asyncio.sleep(0.3)  # one backlog refresh
    assert gateway.server.prometheus.get_sample_value("transfer_gateway_dead_letters", {"platform": "zhejiang"}) == 1


async def test_tracking_shows_the_case_to_its_sides_only(gateway: GatewayHandle) -> None:
    stub, key = gateway.exchange("jiangsu"), gateway.signer("jiangsu")
    msgs = outbound_messages(plan())
    for m in msgs:
        await stub.Submit(sign(m, key))
    tid = msgs[0].header.transfer_id
    case = await gateway.tracking("zhejiang").GetCase(tracking_pb2.GetCaseRequest(transfer_id=tid))
    assert case.state == tracking_pb2.CASE_STATE_FUNDS_SENT
    assert [m.message_id for m in case.messages] == [m.header.message_id for m in msgs]
    assert all(m.accepted_at.seconds > 0 for m in case.messages)
    # Anhui is told what it would be told of a transfer id never seen: not even that the case exists.
    code, reason, _ = await refused(gateway.tracking("anhui").GetCase(tracking_pb2.GetCaseRequest(transfer_id=tid)))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "CASE_NOT_FOUND")
    code, reason, _ = await refused(gateway.tracking("jiangsu").GetCase(
        tracking_pb2.GetCaseRequest(transfer_id=builders.new_id())))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "CASE_NOT_FOUND")


async def test_health_serving_then_not_serving_while_draining(gateway: GatewayHandle) -> None:
    health = health_pb2_grpc.HealthStub(gateway.channel("jiangsu"))
    reply = await health.Check(health_pb2.HealthCheckRequest(service="mitransfer.v1.Exchange"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    stopping = asyncio.create_task(gateway.server.stop(grace=0.5))
    assert (await asyncio.wait_for(watch.read(), 5)).status == health_pb2.HealthCheckResponse.NOT_SERVING
    await stopping


async def test_metrics_endpoint_has_rpc_and_message_counters(gateway: GatewayHandle) -> None:
    jiangsu = gateway.exchange("jiangsu")
    await jiangsu.Submit(sign(outbound_messages(plan())[0], gateway.signer("jiangsu")))
    await refused(jiangsu.Submit(sign(outbound_messages(plan(seed=2))[0], gateway.signer("zhejiang"))))
    text = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{gateway.server.metrics_port}/metrics").read().decode())
    for code in ("OK", "UNAUTHENTICATED"):
        assert (f'grpc_server_handled_total{{grpc_code="{code}",grpc_method="Submit",'
                'grpc_service="mitransfer.v1.Exchange",grpc_type="unary"} 1.0') in text
    assert ('grpc_server_started_total{grpc_method="Submit",grpc_service="mitransfer.v1.Exchange",'
            'grpc_type="unary"} 2.0') in text
    assert 'transfer_gateway_messages_total{kind="outbound_notice",reason="",result="accepted"} 1.0' in text
    assert "11010519" not in text and "测试" not in text  # no personal data in metrics


async def test_logs_carry_no_personal_data(gateway: GatewayHandle, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from gateway.app.logs import JsonFormatter

    caplog.set_level(logging.DEBUG)
    stub, key = gateway.exchange("jiangsu"), gateway.signer("jiangsu")
    p = plan()
    notice, table, _ = outbound_messages(p)
    await stub.Submit(sign(notice, key))
    bad = messages_pb2.InformationTable()
    bad.CopyFrom(table)  # type: ignore[arg-type]
    bad.person.certificate_number = bad.person.certificate_number[:-1] + (
        "0" if bad.person.certificate_number[-1] != "0" else "1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Submit(sign(bad, key))
    await stub.Submit(sign(table, key))
    formatted = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert "accepted" in formatted and notice.header.message_id in formatted  # logging did happen
    [rejected] = [json.loads(line) for line in formatted.splitlines() if '"event": "rejected"' in line]
    assert {k: rejected[k] for k in ("platform", "kind", "message_id", "transfer_id", "code", "reason")} == {
        "platform": "jiangsu", "kind": "information_table", "message_id": bad.header.message_id,
        "transfer_id": bad.header.transfer_id, "code": "INVALID_ARGUMENT", "reason": failure(caught.value).reason}
    for secret in (p.person.certificate_number, p.person.name, bad.person.certificate_number):
        assert secret not in formatted
        assert secret not in (caught.value.details() or "")


def test_recent_receipts_serve_only_the_submitting_platform_and_forget_the_oldest() -> None:
    recent = RecentReceipts(capacity=2)
    recent.put(b"a", "jiangsu", "fund_transfer", b"receipt-a")
    recent.put(b"b", "jiangsu", "fund_transfer", b"receipt-b")
    assert recent.get(b"a", "zhejiang") is None  # another platform goes through every check
    assert recent.get(b"a", "jiangsu") == ("fund_transfer", b"receipt-a")  # and is now the most recent
    recent.put(b"c", "jiangsu", "acknowledgement", b"receipt-c")
    assert (recent.get(b"a", "jiangsu"), recent.get(b"b", "jiangsu")) == (("fund_transfer", b"receipt-a"), None)


async def test_a_committed_message_with_a_broken_signature_is_still_refused(gateway: GatewayHandle) -> None:
    """Byte-identical retries are answered from memory; anything else is checked in full."""
    signed = sign(outbound_messages(plan())[0], gateway.signer("jiangsu"))
    jiangsu = gateway.exchange("jiangsu")
    first = await jiangsu.Submit(signed)
    assert await jiangsu.Submit(signed) == first
    broken = envelope_pb2.SignedMessage()
    broken.CopyFrom(signed)
    broken.signature = bytes([signed.signature[0] ^ 0x01]) + signed.signature[1:]
    assert (await refused(jiangsu.Submit(broken)))[:2] == (grpc.StatusCode.UNAUTHENTICATED, "SIGNATURE_INVALID")
    # The same bytes from a platform that did not send them: its key does not match.
    assert (await refused(gateway.exchange("zhejiang").Submit(signed)))[:2] == (
        grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_SIGNING_KEY")
    assert gateway.count("messages") == 1

"""Malformed requests on every RPC, and reads of whatever the store holds.

Before: malformed UTF-8 in AckDelivery or GetCase, an opening time of 2^62 s in ListCases and a
settlement date of 9999-12-31 were answered UNKNOWN with a Python exception text, and logged
tracebacks; an acceptance enrolled on 9999-12-31 (accepted then) made GetCase of its case and
every ListCases page holding it answer UNKNOWN, for both platforms and for operators.
"""

from __future__ import annotations

import sqlite3

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from clients import builders
from clients.scenario import CasePlan, outbound_messages
from gateway.core.signing import pae
from mitransfer.v1 import (
    admin_pb2,
    exchange_pb2,
    log_pb2,
    log_pb2_grpc,
    messages_pb2,
    tracking_pb2,
    tracking_pb2_grpc,
    types_pb2,
)
from tests.adversarial.conftest import DEADLINE, everything_said, tracebacks
from tests.support import GatewayHandle, failure, sign

Ack = messages_pb2.Acknowledgement
BAD_UTF8 = b"\xc3\x28\xff"  # a truncated two-byte sequence and a byte UTF-8 never uses


def field(number: int, value: bytes) -> bytes:
    """One length-delimited field, as the wire carries it."""
    return bytes([number << 3 | 2, len(value)]) + value


# (method, caller, request bytes with malformed UTF-8 in a string field, the field named)
MALFORMED: list[tuple[str, str, bytes, str]] = [
    ("/mitransfer.v1.Exchange/AckDelivery", "zhejiang", field(1, BAD_UTF8), "message_id"),
    ("/mitransfer.v1.Tracking/GetCase", "zhejiang", field(1, BAD_UTF8), "transfer_id"),
    ("/mitransfer.v1.Tracking/ListCases", "zhejiang", field(4, BAD_UTF8), "outbound_province"),
    ("/mitransfer.v1.Tracking/ListCases", "operator", field(9, BAD_UTF8), "page_token"),
    ("/mitransfer.v1.Admin/ReviewFundTransfer", "reviewer", field(1, BAD_UTF8), "transfer_id"),
    ("/mitransfer.v1.Admin/ReviewFundTransfer", "reviewer", field(3, "好".encode() + BAD_UTF8), "comment"),
    ("/mitransfer.v1.LogService/GetInclusionProof", "zhejiang", field(1, BAD_UTF8), "message_id"),
    ("/grpc.health.v1.Health/Check", "anhui", field(1, BAD_UTF8), "service"),
    ("/mitransfer.v1.Exchange/Submit", "jiangsu", field(3, BAD_UTF8), "key_id"),
    ("/mitransfer.v1.Exchange/Subscribe", "zhejiang", field(1, b"330100") + field(1, BAD_UTF8), "agencies[1]"),
    ("/grpc.health.v1.Health/Watch", "anhui", field(1, BAD_UTF8), "service"),
]


def channel(gateway: GatewayHandle, caller: str) -> grpc.aio.Channel:
    return gateway.operator_channel(caller) if caller in ("reviewer", "operator") else gateway.channel(caller)


@pytest.mark.parametrize(("method", "caller", "request_bytes", "named"), MALFORMED,
                         ids=[f"{m.rpartition('/')[2]}-{f}" for m, _, _, f in MALFORMED])
async def test_malformed_utf8_is_invalid_argument_naming_the_field(
    gateway: GatewayHandle, caplog: pytest.LogCaptureFixture, method: str, caller: str, request_bytes: bytes,
    named: str,
) -> None:
    ch = channel(gateway, caller)
    streaming = method.endswith(("/Subscribe", "/Watch"))
    call = (ch.unary_stream(method) if streaming else ch.unary_unary(method))(request_bytes, timeout=DEADLINE)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if streaming:
            async for _ in call:
                pass
        else:
            await call
    refusal = failure(caught.value)
    assert (refusal.code, refusal.reason, refusal.fields) == (
        grpc.StatusCode.INVALID_ARGUMENT, "PAYLOAD_UNDECODABLE", [named])
    assert not tracebacks(caplog)


async def test_malformed_utf8_deep_in_a_payload_is_named_by_its_path(gateway: GatewayHandle) -> None:
    notice = outbound_messages(CasePlan.synthetic("320100", "330100", seed=1))[0]
    notice.person.name = "XXXXXX"
    signed = sign(notice, gateway.signer("jiangsu"))
    signed.payload = signed.payload.replace(b"XXXXXX", b"\xe5\xbc" + BAD_UTF8 + b"X")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.exchange("jiangsu").Submit(signed, timeout=DEADLINE)
    refusal = failure(caught.value)
    # The signature no longer matches the payload: checked first, so that is what is said.
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAUTHENTICATED, "SIGNATURE_INVALID")
    key = gateway.signer("jiangsu")
    signed.signature = key.sign(pae("mitransfer.v1.OutboundNotice", signed.payload))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.exchange("jiangsu").Submit(signed, timeout=DEADLINE)
    refusal = failure(caught.value)
    assert (refusal.code, refusal.reason, refusal.fields) == (
        grpc.StatusCode.INVALID_ARGUMENT, "PAYLOAD_UNDECODABLE", ["payload.person.name"])


async def test_the_reflection_stream_refuses_malformed_utf8_by_name(gateway: GatewayHandle,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    call = gateway.channel("anhui").stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")(timeout=DEADLINE)
    await call.write(field(4, BAD_UTF8))  # file_containing_symbol
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    refusal = failure(caught.value)
    assert (refusal.code, refusal.reason, refusal.fields) == (
        grpc.StatusCode.INVALID_ARGUMENT, "PAYLOAD_UNDECODABLE", ["file_containing_symbol"])
    assert not tracebacks(caplog)


HUGE = "9" * 100_000  # within gRPC's cut-off, far beyond any id


async def refusal_of(call: object) -> tuple[grpc.StatusCode, str, list[str], str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    f = failure(caught.value)
    return f.code, f.reason, f.fields, everything_said(caught.value)


async def test_malformed_values_in_every_request_are_invalid_argument(
    gateway: GatewayHandle, caplog: pytest.LogCaptureFixture
) -> None:
    zhejiang, reviewer = gateway.exchange("zhejiang"), gateway.admin("reviewer")
    tracking, operator = gateway.tracking("zhejiang"), gateway.admin("operator")
    log = log_pb2_grpc.LogServiceStub(gateway.channel("zhejiang"))
    T = tracking_pb2
    attempts = [
        (zhejiang.AckDelivery(exchange_pb2.AckDeliveryRequest(message_id=HUGE), timeout=DEADLINE),
         "FIELD_INVALID", ["message_id"]),
        (tracking.GetCase(T.GetCaseRequest(transfer_id=HUGE), timeout=DEADLINE), "FIELD_INVALID", ["transfer_id"]),
        (tracking.GetCase(T.GetCaseRequest(transfer_id="../" * 12), timeout=DEADLINE), "FIELD_INVALID",
         ["transfer_id"]),
        (tracking.ListCases(T.ListCasesRequest(opened_from=Timestamp(seconds=2**62)), timeout=DEADLINE),
         "QUERY_INVALID", ["opened_from"]),
        (tracking.ListCases(T.ListCasesRequest(page_token=HUGE), timeout=DEADLINE), "QUERY_INVALID", ["page_token"]),
        (tracking.ListCases(T.ListCasesRequest(states=[T.CASE_STATE_OPENED] * 1000), timeout=DEADLINE),
         "QUERY_INVALID", ["states"]),
        (operator.GetSettlement(admin_pb2.GetSettlementRequest(date=types_pb2.Date(year=9999, month=12, day=31)),
                                timeout=DEADLINE), "FIELD_INVALID", ["date"]),
        (operator.GetSettlement(admin_pb2.GetSettlementRequest(), timeout=DEADLINE), "FIELD_INVALID", ["date"]),
        (reviewer.ReviewFundTransfer(admin_pb2.ReviewFundTransferRequest(transfer_id=HUGE, approve=True),
                                     timeout=DEADLINE), "FIELD_INVALID", ["transfer_id"]),
        (reviewer.ReviewFundTransfer(admin_pb2.ReviewFundTransferRequest(
            transfer_id=builders.new_id(), comment="同意\u202e意同", approve=True), timeout=DEADLINE),
         "FIELD_INVALID", ["comment"]),
        (reviewer.ReviewFundTransfer(admin_pb2.ReviewFundTransferRequest(
            transfer_id=builders.new_id(), comment="驳" * 501), timeout=DEADLINE), "FIELD_INVALID", ["comment"]),
        (log.GetInclusionProof(log_pb2.GetInclusionProofRequest(message_id=HUGE), timeout=DEADLINE),
         "QUERY_INVALID", ["message_id"]),
        (log.GetInclusionProof(log_pb2.GetInclusionProofRequest(message_id=builders.new_id(), tree_size=2**64 - 1),
                               timeout=DEADLINE), "QUERY_INVALID", ["tree_size"]),
        (log.GetConsistencyProof(log_pb2.GetConsistencyProofRequest(first=1, second=2**64 - 1), timeout=DEADLINE),
         "QUERY_INVALID", ["second"]),
    ]
    for call, reason, fields in attempts:
        code, got_reason, got_fields, said = await refusal_of(call)
        assert (code, got_reason, got_fields) == (grpc.StatusCode.INVALID_ARGUMENT, reason, fields)
        assert HUGE[:100] not in said and "\u202e" not in said and len(said) < 1000
    assert not tracebacks(caplog)


@pytest.mark.parametrize(("agencies", "named"), [
    (["330100"] * 300, "agencies"),
    (["33\u202e0100"], "agencies[0]"),
    (["330100", HUGE], "agencies[1]"),
])
async def test_a_subscription_for_malformed_agencies_is_invalid_argument(
    gateway: GatewayHandle, agencies: list[str], named: str
) -> None:
    stream = gateway.exchange("zhejiang").Subscribe(exchange_pb2.SubscribeRequest(agencies=agencies),
                                                    timeout=DEADLINE)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream:
            pass
    refusal = failure(caught.value)
    said = everything_said(caught.value)
    assert (refusal.code, refusal.reason, refusal.fields) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID",
                                                              [named])
    assert "\u202e" not in said and HUGE[:100] not in said


async def test_a_case_holding_a_date_off_the_calendar_is_still_read(
    gateway: GatewayHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """An enrollment on 9999-12-31, as an older gateway accepted and stored it: the case is shown
    to both sides and to operators, its continuity (which cannot be computed) left out."""
    plan = CasePlan.synthetic("320100", "330100", insurance_type=builders.EMPLOYEE, balance_fen=0, seed=7)
    notice, table = outbound_messages(plan)[:2]
    for message in (notice, table):
        await gateway.submit("jiangsu", message)
    ack = builders.acknowledgement(table.header, Ack.STATUS_ACCEPTED, inbound_insurance_type=builders.EMPLOYEE,
                                   inbound_enrollment_date=builders.today_in_china())
    await gateway.submit("zhejiang", ack)
    with sqlite3.connect(gateway.database) as db:  # what the store holds, whoever wrote it
        db.execute("UPDATE cases SET enrollment_date = '9999-12-31' WHERE transfer_id = ?", (plan.route.transfer_id,))
    request = tracking_pb2.GetCaseRequest(transfer_id=plan.route.transfer_id)
    operator_tracking = tracking_pb2_grpc.TrackingStub(gateway.operator_channel("operator"))
    for stub in (gateway.tracking("jiangsu"), gateway.tracking("zhejiang"), operator_tracking):
        case = await stub.GetCase(request, timeout=DEADLINE)
        assert case.state == tracking_pb2.CASE_STATE_INBOUND_ACCEPTED and not case.HasField("continuity")
        page = await stub.ListCases(tracking_pb2.ListCasesRequest(), timeout=DEADLINE)
        assert plan.route.transfer_id in [c.transfer_id for c in page.cases]
    assert not [r for r in caplog.records if r.exc_info]

"""Size and shape: a message too large for the gateway, or too large to be delivered, or built to
make the gateway say (and remember) too much.

Before: a validly signed table followed by ~1,000,000 empty periods made the gateway answer with
~152 MB of error details and keep ~1.9 GB; a notice padded to just under 4 MiB was accepted and
then could never be delivered within a receiver's default 4 MiB limit; a 1 MiB key_id, sender or
message id came back in status messages and error metadata.
"""

from __future__ import annotations

import gc

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import builders
from clients.scenario import CasePlan, outbound_messages
from gateway.core import messages
from gateway.core.limits import (
    DELIVERY_OVERHEAD_BYTES,
    MAX_MESSAGE_BYTES,
    MIN_MESSAGE_BYTES,
    PLATFORM_RECEIVE_BYTES,
    MessageLimits,
)
from gateway.core.signing import pae
from gateway.core.validation import MAX_PERIODS, MAX_REASONS
from mitransfer.v1 import envelope_pb2, exchange_pb2, messages_pb2, types_pb2
from tests.adversarial.conftest import DEADLINE, everything_said, logged, rss_mib, tracebacks
from tests.support import GatewayHandle, failure, sign, signer

EMPTY_PERIOD = b"\x22\x00"  # field 4 (periods), length 0: an empty ContributionPeriod in 2 bytes
UNKNOWN_FIELD = 1000        # a field number no message defines: parsed, kept, never looked at


def plan(seed: int = 1, inbound: str = "330100") -> CasePlan:
    return CasePlan.synthetic("320100", inbound, insurance_type=builders.EMPLOYEE, balance_fen=5_000, seed=seed)


def signed_bytes(gateway: GatewayHandle, platform: str, kind: int, payload: bytes) -> bytes:
    """A SignedMessage over `payload` as given (not re-serialized), properly signed."""
    key = gateway.signer(platform)
    type_name = {envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE: "mitransfer.v1.InformationTable",
                 envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE: "mitransfer.v1.OutboundNotice"}[kind]
    return envelope_pb2.SignedMessage(kind=kind, payload=payload, key_id=key.key_id,
                                      signature=key.sign(pae(type_name, payload))).SerializeToString()


def padded(payload: bytes, total: int) -> bytes:
    """`payload` with an unknown length-delimited field making it `total` bytes long."""
    tag = _varint(UNKNOWN_FIELD << 3 | 2)
    body = total - len(payload) - len(tag)
    body -= len(_varint(body))  # the length's own varint counts too
    return payload + tag + _varint(body) + b"\0" * body


def signed_of_size(gateway: GatewayHandle, kind: int, payload: bytes, size: int) -> bytes:
    """A properly signed SignedMessage of exactly `size` bytes: `payload` padded."""
    request = signed_bytes(gateway, "jiangsu", kind, payload)
    target = len(payload) + size - len(request)
    for _ in range(4):  # the payload's length varint may grow by a byte or two
        request = signed_bytes(gateway, "jiangsu", kind, padded(payload, target))
        if len(request) == size:
            return request
        target += size - len(request)
    raise AssertionError(f"no padding gives {size} bytes")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


async def submit_raw(gateway: GatewayHandle, platform: str, request: bytes) -> grpc.aio.AioRpcError:
    call = gateway.channel(platform).unary_unary("/mitransfer.v1.Exchange/Submit")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request, timeout=DEADLINE)
    return caught.value


async def health_of_other_province(gateway: GatewayHandle) -> int:
    check = health_pb2_grpc.HealthStub(gateway.channel("zhejiang")).Check
    reply = await check(health_pb2.HealthCheckRequest(service="mitransfer.v1.Exchange"), timeout=DEADLINE)
    return int(reply.status)


async def test_a_million_empty_periods_are_cut_off_before_they_are_read(gateway: GatewayHandle) -> None:
    table = outbound_messages(plan())[1].SerializeToString()
    request = signed_bytes(gateway, "jiangsu", envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE,
                           table + EMPTY_PERIOD * 1_000_000)
    gc.collect()
    before = rss_mib()
    for _ in range(5):
        err = await submit_raw(gateway, "jiangsu", request)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # gRPC's own cut-off: twice the 64 KiB limit
        assert await health_of_other_province(gateway) == health_pb2.HealthCheckResponse.SERVING
    gc.collect()
    assert rss_mib() - before < 32
    assert gateway.count("messages") == 0


@pytest.mark.parametrize("periods", [1_000_000, 30_000])
async def test_as_many_empty_periods_as_the_limit_lets_in_cost_one_violation(
    roomy_gateway: GatewayHandle, periods: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Let through by a gateway configured for the largest messages, the table is refused on its
    count before any period is looked at: one violation, an answer of a few hundred bytes."""
    table = outbound_messages(plan())[1].SerializeToString()
    request = signed_bytes(roomy_gateway, "jiangsu", envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE,
                           table + EMPTY_PERIOD * periods)
    assert len(request) <= MAX_MESSAGE_BYTES
    memory = []
    for _ in range(5):
        err = await submit_raw(roomy_gateway, "jiangsu", request)
        refusal = failure(err)
        assert (refusal.code, refusal.reason, refusal.fields) == (
            grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", ["periods"])
        assert len(everything_said(err)) < 600 and "violations" not in refusal.metadata
        assert await health_of_other_province(roomy_gateway) == health_pb2.HealthCheckResponse.SERVING
        gc.collect()
        memory.append(rss_mib())
    # Each call parses its message once (about 70 bytes of memory per empty period while it does,
    # 70 MB for a million) and keeps nothing of it: however many calls, the memory in use stays
    # within one parse of what the first call left.
    assert max(memory) - memory[0] < 100
    assert not tracebacks(caplog) and roomy_gateway.count("messages") == 0


async def test_a_message_a_little_too_large_is_refused_by_name(gateway: GatewayHandle) -> None:
    limit = MessageLimits().max_message_bytes  # the default
    notice = outbound_messages(plan())[0].SerializeToString()
    request = signed_of_size(gateway, envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE, notice, limit + 1)
    refusal = failure(await submit_raw(gateway, "jiangsu", request))
    assert (refusal.code, refusal.reason, refusal.fields, refusal.metadata) == (
        grpc.StatusCode.INVALID_ARGUMENT, "MESSAGE_TOO_LARGE", ["request"], {"max_bytes": str(limit)})
    assert gateway.count("messages") == 0


def largest_refusal(p: CasePlan) -> messages_pb2.OutboundNotice:
    """An outbound notice refused with every reason code, each with the longest text of the widest
    characters, about the person with the longest name: the largest valid message there is."""
    codes = [c for c in types_pb2.ReasonCode.values() if c]
    assert len(codes) == MAX_REASONS
    person = types_pb2.Person()
    person.CopyFrom(p.person)
    person.name = "𠀀" * 50  # four bytes each in UTF-8
    person.psn_no = "P" * 30
    return builders.outbound_notice_refused(p.route, person, p.insurance_type,
                                            [types_pb2.Reason(code=c, text="𠀀" * 500) for c in codes])


def longest_table(p: CasePlan) -> messages_pb2.InformationTable:
    """A table of the most contribution periods the rules allow, one month each."""
    periods = []
    month = (p.suspension_date.year - MAX_PERIODS // 12 - 1) * 12
    for i in range(MAX_PERIODS):
        ym = ((month + i) // 12, (month + i) % 12 + 1)
        periods.append(builders.contribution_period("320100", ym, ym, 1,
                                                    insurance_type=builders.EMPLOYEE))
    return builders.information_table(p.route, p.person, p.insurance_type, p.suspension_date, periods,
                                      p.balance_fen, inbound_insurance_type=p.inbound_type)


async def test_the_largest_valid_messages_fit_the_smallest_limit_and_are_delivered(gateway: GatewayHandle) -> None:
    key = gateway.signer("jiangsu")
    refused_plan, table_plan = plan(seed=2), plan(seed=3)
    notice, table = outbound_messages(table_plan)[:2]
    longest = longest_table(table_plan)
    longest.header.CopyFrom(table.header)
    largest = largest_refusal(refused_plan)
    for message in (largest, longest):
        assert len(sign(message, key).SerializeToString()) <= MIN_MESSAGE_BYTES
    stub = gateway.exchange("jiangsu")
    for message in (largest, notice, longest):
        await stub.Submit(sign(message, key), timeout=DEADLINE)
    # Zhejiang, with gRPC's default receive limit, receives them.
    zhejiang = gateway.exchange("zhejiang")
    received = []
    async for delivery in zhejiang.Subscribe(exchange_pb2.SubscribeRequest(), timeout=DEADLINE):
        header = messages.parse(delivery.message.kind, delivery.message.payload).header
        received.append(header.message_id)
        await zhejiang.AckDelivery(exchange_pb2.AckDeliveryRequest(message_id=header.message_id), timeout=DEADLINE)
        if len(received) == 3:
            break
    assert sorted(received) == sorted(m.header.message_id for m in (largest, notice, longest))


async def test_the_largest_message_accepted_is_delivered_within_a_default_receive_limit(
    roomy_gateway: GatewayHandle
) -> None:
    """A notice padded with an unknown field to the most any configuration takes: its delivery
    (message, receipt, attempt) still fits in gRPC's default 4 MiB receive limit."""
    size = MAX_MESSAGE_BYTES
    payload = outbound_messages(plan())[0].SerializeToString()
    request = signed_of_size(roomy_gateway, envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE, payload, size)
    submit = roomy_gateway.channel("jiangsu").unary_unary("/mitransfer.v1.Exchange/Submit")
    await submit(request, timeout=DEADLINE)
    # Zhejiang's channel has no options: gRPC's default receive limit.
    async for delivery in roomy_gateway.exchange("zhejiang").Subscribe(exchange_pb2.SubscribeRequest(),
                                                                       timeout=DEADLINE):
        assert delivery.message.SerializeToString() == request
        assert delivery.ByteSize() <= size + DELIVERY_OVERHEAD_BYTES <= PLATFORM_RECEIVE_BYTES
        break


async def test_a_megabyte_key_id_sender_or_message_id_is_not_echoed(
    roomy_gateway: GatewayHandle, caplog: pytest.LogCaptureFixture
) -> None:
    huge = "7" * (1 << 20)
    key = signer(roomy_gateway.pki, "jiangsu")
    signed = sign(outbound_messages(plan())[0], key)
    by_key = envelope_pb2.SignedMessage()
    by_key.CopyFrom(signed)
    by_key.key_id = huge
    notice = outbound_messages(plan(seed=4))[0]
    by_sender = messages_pb2.OutboundNotice()
    by_sender.CopyFrom(notice)
    by_sender.header.sender = huge
    by_message_id = messages_pb2.OutboundNotice()
    by_message_id.CopyFrom(notice)
    by_message_id.header.message_id = huge
    attempts = [(by_key, grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_SIGNING_KEY"),
                (sign(by_sender, key), grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID"),
                (sign(by_message_id, key), grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")]
    for request, code, reason in attempts:
        err = await submit_raw(roomy_gateway, "jiangsu", request.SerializeToString())
        refusal = failure(err)
        said = everything_said(err)
        assert (refusal.code, refusal.reason) == (code, reason)
        assert len(said) < 1000 and "7" * 100 not in said
        assert len(err.trailing_metadata().__repr__()) < 4000  # grpc-status-details-bin carries no more
    assert "7" * 100 not in logged(caplog) and not tracebacks(caplog)

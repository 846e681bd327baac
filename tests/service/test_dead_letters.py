"""Dead letters end to end over real mTLS: made by a receiver whose stream keeps failing, listed per
platform with their reason (Admin, role operator), counted in a gauge by kind and reason, and put
back in the queue by an operator; every refusal with its reason."""

from __future__ import annotations

import asyncio
import base64
import uuid

import grpc
import pytest

from clients.scenario import outbound_messages
from mitransfer.v1 import admin_pb2, admin_pb2_grpc, envelope_pb2, exchange_pb2, messages_pb2, tracking_pb2
from tests.service.test_exchange import plan
from tests.support import GatewayHandle, failure, sign

DEADLINE = 10.0


async def dead_letters(gateway: GatewayHandle, count: int) -> list[str]:
    return [m.header.message_id for m in await dead_notices(gateway, count)]


async def dead_notices(gateway: GatewayHandle, count: int) -> list[messages_pb2.OutboundNotice]:
    """`count` notices to Zhejiang whose receiver's stream ends each time they are sent, until
    they are dead letters (max_attempts is 3 in the test configuration); their message ids."""
    sent = []
    for i in range(count):
        notice = outbound_messages(plan(seed=500 + i))[0]
        await gateway.exchange("jiangsu").Submit(sign(notice, gateway.signer("jiangsu")), timeout=DEADLINE)
        sent.append(notice)
    receiver = gateway.exchange("zhejiang")
    for _ in range(3 * count):  # each stream reads one and fails, as a receiver that cannot take it does
        call = receiver.Subscribe(exchange_pb2.SubscribeRequest())
        await asyncio.wait_for(call.read(), DEADLINE)
        call.cancel()
        await asyncio.sleep(0.02)  # the gateway hears of the end before the next opens
        if gateway.count("deliveries", "state = 4") == count:
            break
    assert gateway.count("deliveries", "state = 4") == count
    return sent  # type: ignore[return-value]


async def test_an_operator_lists_dead_letters_with_their_reason_page_by_page(gateway: GatewayHandle) -> None:
    ids = await dead_letters(gateway, 3)
    admin = gateway.admin("operator")
    first = await admin.ListDeadLetters(admin_pb2.ListDeadLettersRequest(platform="zhejiang", page_size=2))
    rest = await admin.ListDeadLetters(admin_pb2.ListDeadLettersRequest(page_token=first.next_page_token))
    letters = [*first.dead_letters, *rest.dead_letters]
    assert [d.message_id for d in letters] == ids and rest.next_page_token == ""
    d = letters[0]
    assert (d.platform, d.receiver, d.kind, d.reason, d.attempts) == (
        "zhejiang", "330100", envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE, "STREAM_ENDED", 3)
    assert d.dead_since.seconds > 0 and d.size_bytes > 0 and d.sequence > 0
    none = await admin.ListDeadLetters(admin_pb2.ListDeadLettersRequest(platform="anhui"))
    assert list(none.dead_letters) == []
    await asyncio.sleep(0.3)  # one monitor reading
    sample = gateway.server.prometheus.get_sample_value(
        "transfer_gateway_dead_letters_by_kind",
        {"platform": "zhejiang", "kind": "outbound_notice", "reason": "STREAM_ENDED"})
    assert sample == 3


async def test_a_redriven_dead_letter_is_delivered_again_with_its_attempts_anew(gateway: GatewayHandle) -> None:
    notices = await dead_notices(gateway, 2)
    ids = [m.header.message_id for m in notices]
    admin = gateway.admin("operator")
    reply = await admin.RedriveDeadLetters(admin_pb2.RedriveDeadLettersRequest(platform="zhejiang",
                                                                              message_ids=[ids[1], str(uuid.uuid4())]))
    assert reply.redriven == 1
    receiver = gateway.exchange("zhejiang")
    call = receiver.Subscribe(exchange_pb2.SubscribeRequest())
    delivery = await asyncio.wait_for(call.read(), DEADLINE)
    assert (envelope_pb2.ReceiptBody.FromString(delivery.receipt.body).message_id, delivery.attempt) == (ids[1], 1)
    await receiver.AckDelivery(exchange_pb2.AckDeliveryRequest(message_id=ids[1]))
    call.cancel()
    case = await gateway.tracking("zhejiang").GetCase(
        tracking_pb2.GetCaseRequest(transfer_id=notices[1].header.transfer_id))
    assert case.messages[0].delivery_state == tracking_pb2.DELIVERY_STATE_ACKNOWLEDGED
    again = await admin.RedriveDeadLetters(admin_pb2.RedriveDeadLettersRequest(platform="zhejiang", all=True))
    assert again.redriven == 1
    left = await admin.ListDeadLetters(admin_pb2.ListDeadLettersRequest())
    assert list(left.dead_letters) == []


@pytest.mark.parametrize(("request_", "field"), [
    (admin_pb2.RedriveDeadLettersRequest(platform="zhejiang"), "message_ids"),
    (admin_pb2.RedriveDeadLettersRequest(platform="zhejiang", message_ids=[str(uuid.uuid4())], all=True),
     "message_ids"),
    (admin_pb2.RedriveDeadLettersRequest(platform="guangdong\u202e", all=True), "platform"),
    (admin_pb2.RedriveDeadLettersRequest(platform="zhejiang", message_ids=[str(uuid.uuid4()).upper()]), "message_ids"),
    (admin_pb2.RedriveDeadLettersRequest(platform="zhejiang", message_ids=[str(uuid.uuid4())] * 1001),
     "message_ids"),
], ids=["neither", "both", "unknown-platform", "id-not-a-uuid", "too-many"])
async def test_a_redrive_that_does_not_say_which_is_refused(
        gateway: GatewayHandle, request_: admin_pb2.RedriveDeadLettersRequest, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gateway.admin("operator").RedriveDeadLetters(request_)
    f = failure(refused.value)
    assert (f.code, f.reason, f.fields) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", [field])
    assert "\u202e" not in f.message


def _token(text: str) -> str:
    """A page token as the service writes one, of any text."""
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(("request_", "field"), [
    (admin_pb2.ListDeadLettersRequest(platform="nowhere"), "platform"),
    (admin_pb2.ListDeadLettersRequest(page_size=501), "page_size"),
    (admin_pb2.ListDeadLettersRequest(page_token="not-ours"), "page_token"),
    (admin_pb2.ListDeadLettersRequest(page_token=_token(f"{2**70} 330100")), "page_token"),  # beyond 64 bits
    (admin_pb2.ListDeadLettersRequest(page_token=_token("1 33\x000100")), "page_token"),  # no agency's code
])
async def test_a_listing_it_cannot_answer_is_refused(
        gateway: GatewayHandle, request_: admin_pb2.ListDeadLettersRequest, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gateway.admin("operator").ListDeadLetters(request_)
    f = failure(refused.value)
    assert (f.code, f.reason, f.fields) == (grpc.StatusCode.INVALID_ARGUMENT, "QUERY_INVALID", [field])


async def test_dead_letters_are_the_operators_not_the_reviewers_nor_the_platforms(gateway: GatewayHandle) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gateway.admin("reviewer").ListDeadLetters(admin_pb2.ListDeadLettersRequest())
    assert failure(refused.value).reason == "ROLE_MISSING"
    platform = admin_pb2_grpc.AdminStub(gateway.channel("zhejiang"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await platform.RedriveDeadLetters(admin_pb2.RedriveDeadLettersRequest(platform="zhejiang", all=True))
    assert failure(refused.value).reason == "OPERATOR_UNKNOWN"

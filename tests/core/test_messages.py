"""gateway.core.messages: the kind table narrowed to what a platform may submit, its errors as
the gateway's InvalidMessage (the table itself is tested in tests/protocol/test_kinds.py)."""

from __future__ import annotations

import pytest

from gateway.core import messages
from gateway.core.errors import InvalidMessage
from mitransfer.v1 import envelope_pb2, messages_pb2


@pytest.mark.parametrize("kind", [99, envelope_pb2.MESSAGE_KIND_UNSPECIFIED, envelope_pb2.MESSAGE_KIND_REVIEW_DECISION,
                                  envelope_pb2.MESSAGE_KIND_CASE_EXPIRED],
                         ids=["undefined", "unspecified", "review-decision", "case-expired"])
def test_a_kind_a_platform_may_not_submit_is_unknown(kind: int) -> None:
    for call in (messages.payload_type, messages.message_class, lambda k: messages.parse(k, b"")):
        with pytest.raises(InvalidMessage) as err:
            call(kind)  # type: ignore[operator]
        assert err.value.reason == "UNKNOWN_MESSAGE_KIND"
        assert [(v.field, v.description) for v in err.value.violations] == [("kind", f"unknown message kind {kind}")]


def test_undecodable_payload_names_the_message() -> None:
    with pytest.raises(InvalidMessage) as err:
        messages.parse(envelope_pb2.MESSAGE_KIND_FUND_TRANSFER, b"\xff")
    assert err.value.reason == "PAYLOAD_UNDECODABLE"
    [violation] = err.value.violations
    assert (violation.field, violation.description) == ("payload", "is not a valid FundTransfer: it is truncated or "
                                                                     "malformed")


def test_undecodable_payload_names_the_field_at_fault() -> None:
    table = messages_pb2.InformationTable()
    table.periods.add(pooling_region="320100")
    table.periods.add(pooling_region="X" * 6)
    payload = table.SerializeToString().replace(b"X" * 6, b"\xff" * 6)  # the second period's region: bad UTF-8
    with pytest.raises(InvalidMessage) as err:
        messages.parse(envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE, payload)
    assert [(v.field, v.description) for v in err.value.violations] == [
        ("payload.periods[1].pooling_region", "is not valid UTF-8")]


def test_business_kinds_parse_and_name_themselves() -> None:
    ack = messages_pb2.Acknowledgement(status=messages_pb2.Acknowledgement.STATUS_ACCEPTED)
    kind = messages.kind_of(ack)
    assert kind == envelope_pb2.MESSAGE_KIND_ACKNOWLEDGEMENT
    assert messages.parse(kind, ack.SerializeToString()) == ack
    assert messages.payload_type(kind) == "mitransfer.v1.Acknowledgement"


@pytest.mark.parametrize(("kind", "name"), [
    (envelope_pb2.MESSAGE_KIND_FUND_TRANSFER, "fund_transfer"),
    (envelope_pb2.MESSAGE_KIND_REVIEW_DECISION, "review_decision"),  # the gateway's own, in its metrics too
    (envelope_pb2.MESSAGE_KIND_UNSPECIFIED, "unknown"),
    (99, "unknown"),  # a metric label never carries the caller's number
])
def test_kind_names_for_labels(kind: int, name: str) -> None:
    assert messages.kind_name(kind) == name  # type: ignore[arg-type]

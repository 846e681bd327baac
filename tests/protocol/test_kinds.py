"""The kind table: every kind the contracts define, its class, payload type and author."""

from __future__ import annotations

import pytest

from mitransfer.protocol import kinds
from mitransfer.protocol.errors import UndecodablePayload, UnknownKind
from mitransfer.v1 import admin_pb2, envelope_pb2, messages_pb2

DEFINED = [n for n in envelope_pb2.MessageKind.values() if n != envelope_pb2.MESSAGE_KIND_UNSPECIFIED]


def test_every_kind_of_the_contracts_is_in_the_table() -> None:
    """A kind added to envelope.proto without a row here fails this test."""
    assert sorted(kinds.KINDS) == sorted(DEFINED)
    assert set(DEFINED) == kinds.BUSINESS_KINDS | kinds.GATEWAY_KINDS
    assert not kinds.BUSINESS_KINDS & kinds.GATEWAY_KINDS


@pytest.mark.parametrize("kind", DEFINED)
def test_each_kind_names_its_own_message(kind: int) -> None:
    row = kinds.KINDS[kind]  # type: ignore[index]
    enum_name = envelope_pb2.MessageKind.Name(kind)
    assert row.number == kind
    assert row.name == enum_name.removeprefix("MESSAGE_KIND_").lower()
    assert kinds.payload_type(kind) == row.payload_type  # type: ignore[arg-type]
    cls = kinds.notice_class(kind) if row.gateway_only else kinds.business_class(kind)  # type: ignore[arg-type]
    assert row.payload_type == cls.DESCRIPTOR.full_name
    # the message's own name is the kind's name in CamelCase: OUTBOUND_NOTICE ↔ OutboundNotice
    assert cls.DESCRIPTOR.name == "".join(w.title() for w in row.name.split("_"))
    assert kinds.kind_of(cls()) == kind


def test_only_decisions_closures_expiries_and_automatic_requests_are_written_by_the_gateway() -> None:
    assert {envelope_pb2.MESSAGE_KIND_REVIEW_DECISION, envelope_pb2.MESSAGE_KIND_CASE_EXPIRED,
            envelope_pb2.MESSAGE_KIND_CASE_CLOSED,
            envelope_pb2.MESSAGE_KIND_AUTOMATIC_TRANSFER_REQUEST} == kinds.GATEWAY_KINDS
    assert kinds.is_gateway_kind(envelope_pb2.MESSAGE_KIND_CASE_EXPIRED)
    assert not kinds.is_gateway_kind(envelope_pb2.MESSAGE_KIND_FUND_TRANSFER)
    assert kinds.REVIEW_DECISION_PAYLOAD_TYPE == "mitransfer.v1.ReviewDecision"
    assert kinds.RECEIPT_PAYLOAD_TYPE == "mitransfer.v1.ReceiptBody"


def test_the_index_kinds_are_business_kinds_a_platform_signs() -> None:
    assert kinds.INDEX_KINDS < kinds.BUSINESS_KINDS
    assert kinds.is_index_kind(envelope_pb2.MESSAGE_KIND_ENROLLMENT)
    assert not kinds.is_index_kind(envelope_pb2.MESSAGE_KIND_TRANSFER_REQUEST)
    assert not kinds.is_index_kind(envelope_pb2.MESSAGE_KIND_AUTOMATIC_TRANSFER_REQUEST)


@pytest.mark.parametrize(("lookup", "kind"), [
    pytest.param(kinds.payload_type, 99, id="payload-type-of-undefined"),
    pytest.param(kinds.payload_type, envelope_pb2.MESSAGE_KIND_UNSPECIFIED, id="payload-type-of-unspecified"),
    pytest.param(kinds.business_class, envelope_pb2.MESSAGE_KIND_REVIEW_DECISION, id="notice-as-business"),
    pytest.param(kinds.notice_class, envelope_pb2.MESSAGE_KIND_FUND_TRANSFER, id="business-as-notice"),
    pytest.param(lambda k: kinds.parse_business(k, b""), envelope_pb2.MESSAGE_KIND_CASE_EXPIRED, id="parse-notice"),
    pytest.param(lambda k: kinds.parse_notice(k, b""), envelope_pb2.MESSAGE_KIND_WITHDRAWAL, id="parse-business"),
])
def test_a_kind_outside_the_table_asked_is_unknown(lookup: object, kind: int) -> None:
    with pytest.raises(UnknownKind) as err:
        lookup(kind)  # type: ignore[operator]
    assert (err.value.reason, err.value.kind) == ("UNKNOWN_KIND", kind)
    assert isinstance(err.value, ValueError)


def test_parse_reads_the_bytes_as_the_kinds_message() -> None:
    withdrawal = messages_pb2.Withdrawal(text="撤回")
    parsed = kinds.parse_business(envelope_pb2.MESSAGE_KIND_WITHDRAWAL, withdrawal.SerializeToString())
    assert parsed == withdrawal
    expired = admin_pb2.CaseExpired(message_id="m")
    assert kinds.parse_notice(envelope_pb2.MESSAGE_KIND_CASE_EXPIRED, expired.SerializeToString()) == expired


@pytest.mark.parametrize("payload", [b"\xff", b"\x0a\x05ab", b"\x08"])
def test_undecodable_payloads_are_refused(payload: bytes) -> None:
    with pytest.raises(UndecodablePayload) as err:
        kinds.parse_business(envelope_pb2.MESSAGE_KIND_FUND_TRANSFER, payload)
    assert err.value.reason == "PAYLOAD_UNDECODABLE"
    assert err.value.message_name == "FundTransfer"
    assert str(err.value) == "payload is not a FundTransfer"


@pytest.mark.parametrize("thing", [envelope_pb2.ReceiptBody(), "OutboundNotice", None])
def test_kind_of_anything_else_is_a_type_error(thing: object) -> None:
    with pytest.raises(TypeError):
        kinds.kind_of(thing)  # type: ignore[arg-type]

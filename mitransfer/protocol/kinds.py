"""The message kinds: protobuf class, DSSE payload type, short name, and who writes each.

Business messages are written and signed by provincial platforms and carry a Header; most belong
to a case, and the index messages (suspended records and enrollments, `INDEX_KINDS`) are addressed
to the gateway itself and belong to none until they open one. Gateway notices (review decisions,
operators' closures, automatic transfer requests, expiries of older cases) are written and signed
by the gateway itself and delivered
to both sides of a case. A platform key never signs a notice and a gateway key never signs a
business message: `is_gateway_kind` is how both ends tell them apart.

This is the one table tying a `MessageKind` number to its class; signing, verification and
parsing on both ends ask it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, TypeAlias

from google.protobuf.message import DecodeError

from mitransfer.protocol.errors import UndecodablePayload, UnknownKind
from mitransfer.v1 import admin_pb2, automatic_pb2, envelope_pb2, messages_pb2

CaseMessage: TypeAlias = (
    messages_pb2.TransferRequest
    | messages_pb2.OutboundNotice
    | messages_pb2.InformationTable
    | messages_pb2.FundTransfer
    | messages_pb2.Acknowledgement
    | messages_pb2.Withdrawal
    | messages_pb2.FundReturn
    | automatic_pb2.BlockerResolution
)
IndexMessage: TypeAlias = (
    automatic_pb2.SuspendedRecord
    | automatic_pb2.SuspendedRecordWithdrawal
    | automatic_pb2.Enrollment
    | automatic_pb2.EnrollmentOptOut
)
BusinessMessage: TypeAlias = CaseMessage | IndexMessage
GatewayNotice: TypeAlias = (
    admin_pb2.ReviewDecision | admin_pb2.CaseExpired | admin_pb2.CaseClosed | automatic_pb2.AutomaticTransferRequest
)
MessageKind: TypeAlias = envelope_pb2.MessageKind.ValueType

_BUSINESS: Final[Mapping[MessageKind, type[BusinessMessage]]] = MappingProxyType({
    envelope_pb2.MESSAGE_KIND_TRANSFER_REQUEST: messages_pb2.TransferRequest,
    envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE: messages_pb2.OutboundNotice,
    envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE: messages_pb2.InformationTable,
    envelope_pb2.MESSAGE_KIND_FUND_TRANSFER: messages_pb2.FundTransfer,
    envelope_pb2.MESSAGE_KIND_ACKNOWLEDGEMENT: messages_pb2.Acknowledgement,
    envelope_pb2.MESSAGE_KIND_WITHDRAWAL: messages_pb2.Withdrawal,
    envelope_pb2.MESSAGE_KIND_FUND_RETURN: messages_pb2.FundReturn,
    envelope_pb2.MESSAGE_KIND_BLOCKER_RESOLUTION: automatic_pb2.BlockerResolution,
    envelope_pb2.MESSAGE_KIND_SUSPENDED_RECORD: automatic_pb2.SuspendedRecord,
    envelope_pb2.MESSAGE_KIND_SUSPENDED_RECORD_WITHDRAWAL: automatic_pb2.SuspendedRecordWithdrawal,
    envelope_pb2.MESSAGE_KIND_ENROLLMENT: automatic_pb2.Enrollment,
    envelope_pb2.MESSAGE_KIND_ENROLLMENT_OPT_OUT: automatic_pb2.EnrollmentOptOut,
})
_NOTICES: Final[Mapping[MessageKind, type[GatewayNotice]]] = MappingProxyType({
    envelope_pb2.MESSAGE_KIND_REVIEW_DECISION: admin_pb2.ReviewDecision,
    envelope_pb2.MESSAGE_KIND_CASE_EXPIRED: admin_pb2.CaseExpired,
    envelope_pb2.MESSAGE_KIND_CASE_CLOSED: admin_pb2.CaseClosed,
    envelope_pb2.MESSAGE_KIND_AUTOMATIC_TRANSFER_REQUEST: automatic_pb2.AutomaticTransferRequest,
})

BUSINESS_KINDS: Final = frozenset(_BUSINESS)
"""The kinds a platform writes and signs (and may submit)."""
GATEWAY_KINDS: Final = frozenset(_NOTICES)
"""The kinds only the gateway writes and signs."""
INDEX_KINDS: Final = frozenset({
    envelope_pb2.MESSAGE_KIND_SUSPENDED_RECORD, envelope_pb2.MESSAGE_KIND_SUSPENDED_RECORD_WITHDRAWAL,
    envelope_pb2.MESSAGE_KIND_ENROLLMENT, envelope_pb2.MESSAGE_KIND_ENROLLMENT_OPT_OUT,
})
"""The business kinds addressed to the gateway's suspended-record index, not to a case's other side
(header.receiver empty)."""

RECEIPT_PAYLOAD_TYPE: Final = envelope_pb2.ReceiptBody.DESCRIPTOR.full_name  # "mitransfer.v1.ReceiptBody"
REVIEW_DECISION_PAYLOAD_TYPE: Final = admin_pb2.ReviewDecision.DESCRIPTOR.full_name


@dataclass(frozen=True)
class Kind:
    """One row of the table."""

    number: MessageKind
    name: str          # short lower-case name for logs, metric labels and output: "fund_transfer"
    payload_type: str  # the DSSE payload type: the message's full protobuf name
    gateway_only: bool  # written and signed by the gateway, never by a platform


def _row(number: MessageKind, cls: type[BusinessMessage] | type[GatewayNotice]) -> Kind:
    name = envelope_pb2.MessageKind.Name(number).removeprefix("MESSAGE_KIND_").lower()
    return Kind(number, name, cls.DESCRIPTOR.full_name, number in _NOTICES)


KINDS: Final[Mapping[MessageKind, Kind]] = MappingProxyType(
    {number: _row(number, cls) for number, cls in (*_BUSINESS.items(), *_NOTICES.items())}
)
"""Every kind the contracts define (all but MESSAGE_KIND_UNSPECIFIED), by number."""

_BY_PAYLOAD_TYPE: Final[Mapping[str, type[BusinessMessage] | type[GatewayNotice]]] = MappingProxyType(
    {cls.DESCRIPTOR.full_name: cls for cls in (*_BUSINESS.values(), *_NOTICES.values())}
)


_KIND_BY_CLASS: Final[Mapping[type[BusinessMessage] | type[GatewayNotice], MessageKind]] = MappingProxyType(
    {cls: number for number, cls in (*_BUSINESS.items(), *_NOTICES.items())}
)


def is_index_kind(kind: MessageKind) -> bool:
    """True for the business kinds addressed to the gateway's index rather than to another agency."""
    return kind in INDEX_KINDS


def is_gateway_kind(kind: MessageKind) -> bool:
    """True for the kinds the gateway itself writes and signs."""
    return kind in _NOTICES


def payload_type(kind: MessageKind) -> str:
    """The DSSE payload type signed with a message of this kind (business or gateway notice).

    Raises:
        UnknownKind: the contracts define no message for this number.
    """
    row = KINDS.get(kind)
    if row is None:
        raise UnknownKind(kind, f"unknown message kind {int(kind)}")
    return row.payload_type


def business_class(kind: MessageKind) -> type[BusinessMessage]:
    """The protobuf class of a business kind.

    Raises:
        UnknownKind: not one of the kinds a platform writes (a gateway notice, or no kind at all).
    """
    cls = _BUSINESS.get(kind)
    if cls is None:
        raise UnknownKind(kind, f"kind {int(kind)} is not a business message")
    return cls


def notice_class(kind: MessageKind) -> type[GatewayNotice]:
    """The protobuf class of a gateway notice kind.

    Raises:
        UnknownKind: not one of the kinds only the gateway writes.
    """
    cls = _NOTICES.get(kind)
    if cls is None:
        raise UnknownKind(kind, f"kind {int(kind)} is not a gateway notice")
    return cls


def kind_of(message: BusinessMessage | GatewayNotice) -> MessageKind:
    """The kind of a business message or gateway notice instance.

    Raises:
        TypeError: any other object.
    """
    cls = _BY_PAYLOAD_TYPE.get(getattr(getattr(message, "DESCRIPTOR", None), "full_name", ""))
    if cls is None or not isinstance(message, cls):
        raise TypeError(f"not a business message or gateway notice: {type(message).__name__}")
    return _KIND_BY_CLASS[cls]



def parse_business(kind: MessageKind, payload: bytes) -> BusinessMessage:
    """Parse a business message whose signature was already verified.

    Raises:
        UnknownKind: not a business kind.
        UndecodablePayload: the bytes are not a message of that kind.
    """
    message = business_class(kind)()
    _parse_into(message, payload)
    return message


def parse_notice(kind: MessageKind, payload: bytes) -> GatewayNotice:
    """Parse a gateway notice whose gateway signature was already verified.

    Raises:
        UnknownKind: not a gateway notice kind.
        UndecodablePayload: the bytes are not a message of that kind.
    """
    notice = notice_class(kind)()
    _parse_into(notice, payload)
    return notice


def _parse_into(message: BusinessMessage | GatewayNotice, payload: bytes) -> None:
    try:
        message.ParseFromString(payload)
    except DecodeError as exc:
        raise UndecodablePayload(message.DESCRIPTOR.name, str(exc)) from exc

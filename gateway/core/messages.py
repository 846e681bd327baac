"""The four business message kinds: their classes, DSSE payload types and parsing.

This is the one table that ties a `MessageKind` to its protobuf class; everything else asks it.
"""

from __future__ import annotations

from typing import Final, TypeAlias

from google.protobuf.message import DecodeError

from gateway.core.errors import FieldViolation, InvalidMessage
from mitransfer.v1 import admin_pb2, envelope_pb2, messages_pb2

BusinessMessage: TypeAlias = (
    messages_pb2.TransferRequest
    | messages_pb2.OutboundNotice
    | messages_pb2.InformationTable
    | messages_pb2.FundTransfer
    | messages_pb2.Acknowledgement
    | messages_pb2.Withdrawal
)

MessageKind: TypeAlias = envelope_pb2.MessageKind.ValueType

# The kinds a platform may submit. MESSAGE_KIND_REVIEW_DECISION is made by the gateway only.
_CLASSES: Final[dict[MessageKind, type[BusinessMessage]]] = {
    envelope_pb2.MESSAGE_KIND_TRANSFER_REQUEST: messages_pb2.TransferRequest,
    envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE: messages_pb2.OutboundNotice,
    envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE: messages_pb2.InformationTable,
    envelope_pb2.MESSAGE_KIND_FUND_TRANSFER: messages_pb2.FundTransfer,
    envelope_pb2.MESSAGE_KIND_ACKNOWLEDGEMENT: messages_pb2.Acknowledgement,
    envelope_pb2.MESSAGE_KIND_WITHDRAWAL: messages_pb2.Withdrawal,
}

RECEIPT_PAYLOAD_TYPE: Final = envelope_pb2.ReceiptBody.DESCRIPTOR.full_name
REVIEW_DECISION_PAYLOAD_TYPE: Final = admin_pb2.ReviewDecision.DESCRIPTOR.full_name


_KIND_NAMES: Final[dict[int, str]] = {
    number: name.removeprefix("MESSAGE_KIND_").lower()
    for name, number in envelope_pb2.MessageKind.items() if number != envelope_pb2.MESSAGE_KIND_UNSPECIFIED
}


def kind_name(kind: MessageKind) -> str:
    """Short lower-case name of a kind for logs and metric labels (`fund_transfer`); "unknown"
    for a number the contracts do not define."""
    return _KIND_NAMES.get(kind, "unknown")


def payload_type(kind: MessageKind) -> str:
    """The DSSE payload type signed with a message of this kind: its full protobuf name.

    Raises:
        InvalidMessage: the kind is not one of the four business messages.
    """
    return message_class(kind).DESCRIPTOR.full_name


def message_class(kind: MessageKind) -> type[BusinessMessage]:
    """The protobuf class of a kind. Raises InvalidMessage for an unknown kind."""
    try:
        return _CLASSES[kind]
    except KeyError:
        raise InvalidMessage(
            [FieldViolation("kind", f"unknown message kind {int(kind)}")], reason="UNKNOWN_MESSAGE_KIND"
        ) from None


def kind_of(message: BusinessMessage) -> MessageKind:
    """The kind of a business message instance."""
    for kind, cls in _CLASSES.items():
        if isinstance(message, cls):
            return kind
    raise TypeError(f"not a business message: {type(message).__name__}")


def parse(kind: MessageKind, payload: bytes) -> BusinessMessage:
    """Parse a verified payload. Raises InvalidMessage if the bytes are not a message of that kind."""
    message = message_class(kind)()
    try:
        message.ParseFromString(payload)
    except DecodeError as exc:
        raise InvalidMessage(
            [FieldViolation("payload", f"not a valid {message.DESCRIPTOR.name}: {exc}")],
            reason="PAYLOAD_UNDECODABLE",
        ) from exc
    return message

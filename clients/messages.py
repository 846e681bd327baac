"""The message kinds: their protobuf classes and DSSE payload types.

Business messages (sent by platforms, with a Header) and gateway notices (review decisions and
expiries, written and signed by the gateway itself, delivered to both sides of a case).

The one table tying a `MessageKind` to its class; signing, verification and parsing ask it.
"""

from __future__ import annotations

from typing import Final, TypeAlias

from google.protobuf.message import DecodeError

from clients.errors import VerificationError
from mitransfer.v1 import admin_pb2, envelope_pb2, messages_pb2

BusinessMessage: TypeAlias = (
    messages_pb2.TransferRequest
    | messages_pb2.OutboundNotice
    | messages_pb2.InformationTable
    | messages_pb2.FundTransfer
    | messages_pb2.Acknowledgement
    | messages_pb2.Withdrawal
)
GatewayNotice: TypeAlias = admin_pb2.ReviewDecision | admin_pb2.CaseExpired
MessageKind: TypeAlias = envelope_pb2.MessageKind.ValueType

_CLASSES: Final[dict[MessageKind, type[BusinessMessage]]] = {
    envelope_pb2.MESSAGE_KIND_TRANSFER_REQUEST: messages_pb2.TransferRequest,
    envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE: messages_pb2.OutboundNotice,
    envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE: messages_pb2.InformationTable,
    envelope_pb2.MESSAGE_KIND_FUND_TRANSFER: messages_pb2.FundTransfer,
    envelope_pb2.MESSAGE_KIND_ACKNOWLEDGEMENT: messages_pb2.Acknowledgement,
    envelope_pb2.MESSAGE_KIND_WITHDRAWAL: messages_pb2.Withdrawal,
}
# Signed by a gateway key, never by a platform's.
_GATEWAY_CLASSES: Final[dict[MessageKind, type[GatewayNotice]]] = {
    envelope_pb2.MESSAGE_KIND_REVIEW_DECISION: admin_pb2.ReviewDecision,
    envelope_pb2.MESSAGE_KIND_CASE_EXPIRED: admin_pb2.CaseExpired,
}

RECEIPT_PAYLOAD_TYPE: Final = envelope_pb2.ReceiptBody.DESCRIPTOR.full_name  # "mitransfer.v1.ReceiptBody"


def kind_of(message: BusinessMessage) -> MessageKind:
    """The kind of a business message instance. Raises TypeError for anything else."""
    for kind, cls in _CLASSES.items():
        if isinstance(message, cls):
            return kind
    raise TypeError(f"not a business message: {type(message).__name__}")


def is_gateway_kind(kind: MessageKind) -> bool:
    """True for the kinds the gateway itself writes and signs."""
    return kind in _GATEWAY_CLASSES


def kind_name(kind: MessageKind) -> str:
    """Short name for output and logs: `fund_transfer`."""
    if kind not in _CLASSES and kind not in _GATEWAY_CLASSES:
        return f"kind_{int(kind)}"
    return envelope_pb2.MessageKind.Name(kind).removeprefix("MESSAGE_KIND_").lower()


def payload_type(kind: MessageKind) -> str:
    """The DSSE payload type of a kind: its message's full protobuf name.

    Raises:
        VerificationError: (reason UNKNOWN_KIND) not one of the four business kinds.
    """
    cls = _CLASSES.get(kind) or _GATEWAY_CLASSES.get(kind)
    if cls is None:
        raise VerificationError(f"unknown message kind {int(kind)}", reason="UNKNOWN_KIND")
    return cls.DESCRIPTOR.full_name


def parse(kind: MessageKind, payload: bytes) -> BusinessMessage:
    """Parse a payload whose signature was already verified.

    Raises:
        VerificationError: (reason UNKNOWN_KIND or PAYLOAD_UNDECODABLE).
    """
    if kind not in _CLASSES:
        raise VerificationError(f"kind {int(kind)} is not a business message", reason="UNKNOWN_KIND")
    message = _CLASSES[kind]()
    try:
        message.ParseFromString(payload)
    except DecodeError as exc:
        raise VerificationError(f"payload is not a {message.DESCRIPTOR.name}",
                                reason="PAYLOAD_UNDECODABLE") from exc
    return message


def parse_gateway_notice(kind: MessageKind, payload: bytes) -> GatewayNotice:
    """Parse a gateway notice whose gateway signature was already verified.

    Raises:
        VerificationError: (reason UNKNOWN_KIND or PAYLOAD_UNDECODABLE).
    """
    cls = _GATEWAY_CLASSES.get(kind)
    if cls is None:
        raise VerificationError(f"kind {int(kind)} is not a gateway notice", reason="UNKNOWN_KIND")
    notice = cls()
    try:
        notice.ParseFromString(payload)
    except DecodeError as exc:
        raise VerificationError(f"payload is not a {notice.DESCRIPTOR.name}", reason="PAYLOAD_UNDECODABLE") from exc
    return notice

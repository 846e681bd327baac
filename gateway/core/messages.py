"""The business message kinds as the gateway accepts them: classes, payload types, parsing.

The table itself is `mitransfer.protocol.kinds`, shared with the platforms. Here it is narrowed to
the kinds a platform may submit (a gateway notice submitted by a platform is an unknown kind) and
its errors become the gateway's InvalidMessage.
"""

from __future__ import annotations

from gateway.core.errors import FieldViolation, InvalidMessage
from gateway.core.wire import undecodable
from mitransfer.protocol import kinds
from mitransfer.protocol.errors import UndecodablePayload, UnknownKind
from mitransfer.protocol.kinds import (
    RECEIPT_PAYLOAD_TYPE,
    REVIEW_DECISION_PAYLOAD_TYPE,
    BusinessMessage,
    CaseMessage,
    IndexMessage,
    MessageKind,
    is_index_kind,
    kind_of,
)

__all__ = [
    "RECEIPT_PAYLOAD_TYPE", "REVIEW_DECISION_PAYLOAD_TYPE", "BusinessMessage", "CaseMessage", "IndexMessage",
    "MessageKind", "is_index_kind", "kind_name", "kind_of", "message_class", "parse", "payload_type",
]


def kind_name(kind: MessageKind) -> str:
    """Short lower-case name of a kind for logs and metric labels (`fund_transfer`); "unknown"
    for a number the contracts do not define."""
    row = kinds.KINDS.get(kind)
    return row.name if row is not None else "unknown"


def payload_type(kind: MessageKind) -> str:
    """The DSSE payload type signed with a message of this kind: its full protobuf name.

    Raises:
        InvalidMessage: (UNKNOWN_MESSAGE_KIND) the kind is not one of the business messages.
    """
    return message_class(kind).DESCRIPTOR.full_name


def message_class(kind: MessageKind) -> type[BusinessMessage]:
    """The protobuf class of a kind. Raises InvalidMessage (UNKNOWN_MESSAGE_KIND) for an unknown kind."""
    try:
        return kinds.business_class(kind)
    except UnknownKind as exc:
        raise _unknown_kind(exc) from None


def parse(kind: MessageKind, payload: bytes) -> BusinessMessage:
    """Parse a verified payload.

    Raises:
        InvalidMessage: UNKNOWN_MESSAGE_KIND, or PAYLOAD_UNDECODABLE if the bytes are not a
            message of that kind.
    """
    try:
        return kinds.parse_business(kind, payload)
    except UnknownKind as exc:
        raise _unknown_kind(exc) from None
    except UndecodablePayload as exc:  # name the field at fault, not the decoder's words
        raise undecodable(message_class(kind).DESCRIPTOR, payload, prefix="payload.", whole="payload",
                          reason=exc.reason) from exc


def _unknown_kind(exc: UnknownKind) -> InvalidMessage:
    return InvalidMessage([FieldViolation("kind", f"unknown message kind {exc.kind}")], reason="UNKNOWN_MESSAGE_KIND")

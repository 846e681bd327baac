"""The message kinds: their protobuf classes and DSSE payload types.

Business messages (sent by platforms, with a Header) and gateway notices (review decisions,
operators' closures and expiries, written and signed by the gateway itself, delivered to both
sides of a case).

The table is `mitransfer.protocol.kinds`, the one the gateway uses too; here its errors become
`VerificationError`s with the same reason codes.
"""

from __future__ import annotations

from clients.errors import VerificationError
from mitransfer.protocol import kinds
from mitransfer.protocol.errors import ProtocolError
from mitransfer.protocol.kinds import (
    RECEIPT_PAYLOAD_TYPE,
    BusinessMessage,
    GatewayNotice,
    MessageKind,
    is_gateway_kind,
)

__all__ = [
    "RECEIPT_PAYLOAD_TYPE", "BusinessMessage", "GatewayNotice", "MessageKind", "is_gateway_kind", "kind_name",
    "kind_of", "parse", "parse_gateway_notice", "payload_type",
]


def kind_of(message: BusinessMessage) -> MessageKind:
    """The kind of a business message instance. Raises TypeError for anything else."""
    kind = kinds.kind_of(message)
    if is_gateway_kind(kind):
        raise TypeError(f"not a business message: {type(message).__name__}")
    return kind


def kind_name(kind: MessageKind) -> str:
    """Short name for output and logs: `fund_transfer` (`kind_99` for a number no contract defines)."""
    row = kinds.KINDS.get(kind)
    return row.name if row is not None else f"kind_{int(kind)}"


def payload_type(kind: MessageKind) -> str:
    """The DSSE payload type of a kind (business or gateway notice): its message's full protobuf name.

    Raises:
        VerificationError: (UNKNOWN_KIND) a number no contract defines.
    """
    try:
        return kinds.payload_type(kind)
    except ProtocolError as exc:
        raise _refused(exc) from exc


def parse(kind: MessageKind, payload: bytes) -> BusinessMessage:
    """Parse a payload whose signature was already verified.

    Raises:
        VerificationError: (UNKNOWN_KIND or PAYLOAD_UNDECODABLE).
    """
    try:
        return kinds.parse_business(kind, payload)
    except ProtocolError as exc:
        raise _refused(exc) from exc


def parse_gateway_notice(kind: MessageKind, payload: bytes) -> GatewayNotice:
    """Parse a gateway notice whose gateway signature was already verified.

    Raises:
        VerificationError: (UNKNOWN_KIND or PAYLOAD_UNDECODABLE).
    """
    try:
        return kinds.parse_notice(kind, payload)
    except ProtocolError as exc:
        raise _refused(exc) from exc


def _refused(exc: ProtocolError) -> VerificationError:
    """Data from the gateway or a peer that does not fit the protocol: never act on it."""
    return VerificationError(str(exc), reason=exc.reason)

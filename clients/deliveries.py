"""Receiving side, pure part: verify a delivery completely before acting on it, and remember
which message ids were already handled.

A delivery carries the sender's signed bytes and the gateway's receipt. Both signatures are
checked against the registry, then the receipt is compared with the message it attests, and the
signing key's platform must be the one that speaks for the header's sender agency: a platform
cannot sign in another province's name even with a valid key of its own.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from clients.errors import VerificationError
from clients.messages import BusinessMessage, GatewayNotice, MessageKind, is_gateway_kind, parse, parse_gateway_notice
from clients.signing import KeyRing
from mitransfer.v1 import envelope_pb2, exchange_pb2


@dataclass(frozen=True)
class VerifiedDelivery:
    """A delivery whose signatures and attestations all checked out."""

    kind: MessageKind
    message: BusinessMessage | GatewayNotice  # parsed from the verified payload
    receipt: envelope_pb2.ReceiptBody        # the gateway's attestation (sequence, accepted_at)
    sender_platform: str                     # the platform whose key signed it ("gateway" for notices)
    attempt: int                             # 1 on first delivery
    signed: envelope_pb2.SignedMessage       # the original bytes, to store as evidence
    signed_receipt: envelope_pb2.Receipt     # the original receipt, to store as evidence

    @property
    def message_id(self) -> str:
        return self.receipt.message_id

    @property
    def transfer_id(self) -> str:
        return self.receipt.transfer_id


def open_delivery(keyring: KeyRing, delivery: exchange_pb2.Delivery, *, receiving_platform: str) -> VerifiedDelivery:
    """Verify a delivery for `receiving_platform` and parse its message.

    Raises:
        VerificationError: a signature or key fails (UNKNOWN_KEY, BAD_SIGNATURE, UNKNOWN_KIND),
            the payload does not parse (PAYLOAD_UNDECODABLE), the receipt does not attest this
            message (RECEIPT_MISMATCH), the signer does not speak for the sender agency
            (SENDER_NOT_OF_SIGNER), or the receiver is not ours (NOT_FOR_US).
    """
    receipt = keyring.verify_receipt(delivery.receipt)
    signed = delivery.message
    if is_gateway_kind(signed.kind):
        return _open_gateway_notice(keyring, delivery, receipt, receiving_platform)
    kind, payload = keyring.verify_message(signed, receipt.accepted_at.ToDatetime(dt.UTC))
    if receipt.payload_sha256 != hashlib.sha256(payload).digest() or receipt.kind != kind:
        raise VerificationError("the receipt does not attest this payload", reason="RECEIPT_MISMATCH")
    message = parse(kind, payload)
    h = message.header
    attested = (receipt.message_id, receipt.transfer_id, receipt.sender, receipt.receiver)
    if (h.message_id, h.transfer_id, h.sender, h.receiver) != attested:
        raise VerificationError("the receipt's ids or agencies differ from the message header",
                                reason="RECEIPT_MISMATCH")
    signer_platform = keyring.platform_of_key(signed.key_id)
    if keyring.platform_of_agency(h.sender) != signer_platform:
        raise VerificationError(f"key {signed.key_id} of {signer_platform} may not sign for agency {h.sender}",
                                reason="SENDER_NOT_OF_SIGNER")
    if keyring.platform_of_agency(h.receiver) != receiving_platform:
        raise VerificationError(f"agency {h.receiver} is not one of {receiving_platform}'s",
                                reason="NOT_FOR_US")
    return VerifiedDelivery(kind, message, receipt, signer_platform, delivery.attempt,
                            signed, delivery.receipt)


def _open_gateway_notice(keyring: KeyRing, delivery: exchange_pb2.Delivery, receipt: envelope_pb2.ReceiptBody,
                         receiving_platform: str) -> VerifiedDelivery:
    """A review decision or closure (or, in older cases, an expiry): signed by a gateway key,
    addressed to both sides of its case."""
    kind, payload = keyring.verify_gateway_message(delivery.message, receipt.accepted_at.ToDatetime(dt.UTC))
    if receipt.payload_sha256 != hashlib.sha256(payload).digest() or receipt.kind != kind:
        raise VerificationError("the receipt does not attest this payload", reason="RECEIPT_MISMATCH")
    notice = parse_gateway_notice(kind, payload)
    if (notice.message_id, notice.transfer_id, receipt.sender) != (receipt.message_id, receipt.transfer_id, "gateway"):
        raise VerificationError("the receipt's ids differ from the gateway notice", reason="RECEIPT_MISMATCH")
    sides = (keyring.platform_of_agency(notice.outbound), keyring.platform_of_agency(notice.inbound))
    if receiving_platform not in sides:
        raise VerificationError(f"neither side of case {notice.transfer_id} is {receiving_platform}'s",
                                reason="NOT_FOR_US")
    return VerifiedDelivery(kind, notice, receipt, "gateway", delivery.attempt, delivery.message, delivery.receipt)


class RecentIds:
    """The most recent `capacity` message ids handled, to drop redeliveries (an LRU set).

    Bounded memory suits a demo. A real platform records each handled message id in its own
    database, in the transaction that stores the message, and checks that table instead: an
    in-memory set forgets everything on restart and everything older than `capacity`.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, message_id: str) -> None:
        self._ids[message_id] = None
        self._ids.move_to_end(message_id)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)

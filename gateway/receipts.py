"""The gateway's signed receipts (non-repudiation of receipt)."""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2

from gateway.messages import RECEIPT_PAYLOAD_TYPE, MessageKind
from gateway.signing import Signer, pae
from gateway.store import IncomingMessage, MakeReceipt
from mitransfer.v1 import envelope_pb2

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def issue_receipt(
    signer: Signer,
    *,
    message_id: str,
    transfer_id: str,
    kind: MessageKind,
    sender: str,
    receiver: str,
    payload_sha256: bytes,
    sequence: int,
    accepted_at: dt.datetime,
) -> bytes:
    """A serialized, signed Receipt attesting that the gateway committed this message."""
    since_epoch = accepted_at - _EPOCH  # Timestamp.FromDatetime does the same, at several times the cost
    body = envelope_pb2.ReceiptBody(
        message_id=message_id, transfer_id=transfer_id, kind=kind, sender=sender, receiver=receiver,
        payload_sha256=payload_sha256, sequence=sequence,
        accepted_at=timestamp_pb2.Timestamp(seconds=since_epoch.days * 86_400 + since_epoch.seconds,
                                            nanos=since_epoch.microseconds * 1000),
    )
    body_bytes = body.SerializeToString()
    receipt = envelope_pb2.Receipt(
        body=body_bytes, key_id=signer.key_id, signature=signer.sign(pae(RECEIPT_PAYLOAD_TYPE, body_bytes))
    )
    return receipt.SerializeToString()


def receipt_maker(signer: Signer, message: IncomingMessage, payload_sha256: bytes) -> MakeReceipt:
    """What the store calls, inside its transaction, once it knows the sequence and time."""

    def make(sequence: int, accepted_at: dt.datetime) -> bytes:
        return issue_receipt(
            signer, message_id=message.message_id, transfer_id=message.transfer_id, kind=message.kind,
            sender=message.sender, receiver=message.receiver, payload_sha256=payload_sha256,
            sequence=sequence, accepted_at=accepted_at,
        )

    return make
